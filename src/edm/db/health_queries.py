"""The SQL of the health checks, for both databases (built like `queries.py`).

Each check is one query that counts or finds the oldest, so a check costs the same
whatever the size of the installation's history.
"""

from __future__ import annotations

from edm.db.queries import both

# Enabled, unfrozen services and the last beat of a running worker for each, from any
# instance.
SERVICE_BEATS = both("""
    SELECT s.id, s.name, s.last_error,
           (SELECT max(h.beat_at) FROM worker_heartbeats h
            WHERE h.service_id = s.id AND h.state = 'running') AS last_beat,
           (SELECT h.last_error FROM worker_heartbeats h
            WHERE h.service_id = s.id ORDER BY h.beat_at DESC LIMIT 1) AS worker_error
    FROM services s WHERE s.enabled AND NOT s.frozen ORDER BY s.id""")

FROZEN_SERVICES = both("""
    SELECT name, frozen_reason, frozen_at FROM services
    WHERE enabled AND frozen ORDER BY id""")

# Rows whose lease ran out more than `:grace` seconds ago: the reaper should have taken
# them back by now.
PAST_LEASE = both("""
    SELECT count(*) AS rows, min(lease_expires_at) AS oldest FROM sub_tasks
    WHERE status IN ('allocated', 'sending') AND lease_expires_at < {now} - :grace""")

# A service some sub-task may go through: enabled and not frozen.
_USABLE = "v.enabled AND NOT v.frozen"

# Per running task with `pending` rows due that a usable service could send (not pinned
# to a frozen service; the task has a usable service among those it may use): since when
# its queue has not moved. That is the latest of: the task's start, the first of those
# rows falling due, and the last time one of its rows was sent or settled. A long task
# sending at its pace moves all the time, so only a stalled one ages.
QUEUE_AGE = both(f"""
    SELECT t.id, t.name, coalesce(t.started_at, t.created_at) AS started,
           min(s.next_attempt_at) AS first_due,
           (SELECT max(coalesce(x.finished_at, x.sending_at)) FROM sub_tasks x
            WHERE x.task_id = t.id) AS last_moved
    FROM sub_tasks s JOIN tasks t ON t.id = s.task_id
    WHERE t.status = 'running' AND s.status = 'pending' AND s.next_attempt_at <= {{now}}
      AND (s.pinned_service_id IS NULL
           OR EXISTS (SELECT 1 FROM services v WHERE v.id = s.pinned_service_id AND {_USABLE}))
      AND EXISTS (
          SELECT 1 FROM services v WHERE {_USABLE}
            AND (NOT EXISTS (SELECT 1 FROM task_services ts WHERE ts.task_id = t.id)
                 OR EXISTS (SELECT 1 FROM task_services ts
                            WHERE ts.task_id = t.id AND ts.service_id = v.id)))
    GROUP BY t.id, t.name, t.started_at, t.created_at ORDER BY t.id""")

UNKNOWN_OUTCOMES = both("""
    SELECT count(*) AS rows, min(coalesce(finished_at, sending_at, first_sending_at)) AS oldest
    FROM sub_tasks WHERE status = 'unknown'""")

EVENT_TROUBLE = both("""
    SELECT
      (SELECT count(*) FROM events
       WHERE status = 'unmatched' AND created_at < {now} - :unmatched_age) AS unmatched,
      (SELECT count(*) FROM events
       WHERE status = 'error' AND created_at >= {now} - :window) AS errors,
      (SELECT count(*) FROM webhook_requests
       WHERE status = 'invalid' AND received_at >= {now} - :window) AS invalid""")
