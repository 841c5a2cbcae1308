-- wrk script for bench/webhooks.py: posts each body of a file (one JSON body per line)
-- once and says so when every one has been answered. Arguments: BODIES_FILE TOKEN.
-- Runs in one wrk thread (-t1), so the counters below see every request.

local bodies, next_body, answered, refused = {}, 1, 0, 0
local headers
-- wrk builds one request at thread start that it never sends: that one must not be a body.
local primed = false

function init(args)
   for line in io.lines(args[1]) do
      bodies[#bodies + 1] = line
   end
   headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}
end

function request()
   if primed and next_body <= #bodies then
      local body = bodies[next_body]
      next_body = next_body + 1
      return wrk.format("POST", "/api/webhooks/generic", headers, body)
   end
   -- Before the first body, and once every body is out: something cheap, not counted.
   primed = true
   return wrk.format("GET", "/health/live")
end

function response(status, _, body)
   if body:find('"request_id"', 1, true) or status >= 400 then
      answered = answered + 1
      if status >= 300 then
         refused = refused + 1
      end
      if answered == #bodies then
         -- On stderr, unbuffered: bench/webhooks.py waits for this line, then stops wrk.
         io.stderr:write(string.format("answered %d refused %d\n", answered, refused))
         wrk.thread:stop()
      end
   end
end
