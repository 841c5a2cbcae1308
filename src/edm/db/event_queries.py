"""The SQL of the event log and of applying tracking facts, for both databases.

Built like `queries.py`: one dict per statement, keyed by dialect, `{now}` the database's
clock. Facts are applied so that any order and any repetition of the same events gives
the same state: first-seen times take the minimum, counters grow once per unique event
(`events` is unique by provider and key), and a contact's suppression only ever moves up
a fixed order.
"""

from __future__ import annotations

from edm.db.queries import both, each

# -- the event log ---------------------------------------------------------------------------------
# Many raw requests in one statement, `:rows` a JSON array of {provider, headers, body}:
# one short statement whatever the count (a statement with a parameter per value would be
# parsed anew each time). Returns their ids.
LOG_REQUESTS = each(
    {
        "postgresql": """
        INSERT INTO webhook_requests (provider, received_at, headers, body, status)
        SELECT r.provider, {now}, r.headers, r.body, 'received'
        FROM json_to_recordset(CAST(:rows AS json)) AS r(provider text, headers json, body text)
        RETURNING id""",
        "sqlite": """
        INSERT INTO webhook_requests (provider, received_at, headers, body, status)
        SELECT json_extract(value, '$.provider'), {now}, json_extract(value, '$.headers'),
               json_extract(value, '$.body'), 'received'
        FROM json_each(:rows) ORDER BY key
        RETURNING id""",
    }
)


# One process takes a request at a time; one left `processing` by a process that died is
# taken again once it is `:stale` seconds old.
CLAIM_REQUEST = both("""
    UPDATE webhook_requests SET status = 'processing', processed_at = {now}
    WHERE id = :id
      AND (status = 'received' OR (status = 'processing' AND processed_at < {now} - :stale))
    RETURNING provider, body""")

FINISH_REQUEST = both("""
    UPDATE webhook_requests SET status = :status, error = :error, processed_at = {now}
    WHERE id = :id""")

# Requests logged but never processed (the process stopped in between), oldest first.
UNPROCESSED_REQUESTS = both("""
    SELECT id FROM webhook_requests
    WHERE status IN ('received', 'processing') AND received_at <= {now} - :min_age
    ORDER BY id LIMIT :limit""")

# -- one fact, once: a repeat only counts ----------------------------------------------------------
# Facts in one statement, each once, `:rows` a JSON array of objects with the columns
# below (`data` an object); the id, provider and key of each row inserted (a repeat of a
# stored fact returns none). Rows are inserted in array order, which is lock order.
_EVENT_COLUMNS = (
    "request_id", "provider", "dedupe_key", "event", "occurred_at", "status", "ref_sub_task_id",
    "ref_task_id", "provider_message_id", "message_id", "recipient", "data",
)  # fmt: skip
_PG_EVENT_TYPES = (
    "request_id bigint, provider text, dedupe_key text, event text, occurred_at float8,"
    " status text, ref_sub_task_id bigint, ref_task_id bigint, provider_message_id text,"
    " message_id text, recipient text, data json"
)
INSERT_EVENTS = each(
    {
        "postgresql": f"""
        INSERT INTO events ({", ".join(_EVENT_COLUMNS)}, created_at)
        SELECT {", ".join("r." + column for column in _EVENT_COLUMNS)}, {{now}}
        FROM json_to_recordset(CAST(:rows AS json)) AS r({_PG_EVENT_TYPES})
        ON CONFLICT (provider, dedupe_key) DO NOTHING
        RETURNING id, provider, dedupe_key""",
        # `WHERE true`: without it SQLite would read ON CONFLICT as part of the join.
        "sqlite": f"""
        INSERT INTO events ({", ".join(_EVENT_COLUMNS)}, created_at)
        SELECT {", ".join(f"json_extract(value, '$.{column}')" for column in _EVENT_COLUMNS)},
               {{now}}
        FROM json_each(:rows) WHERE true ORDER BY key
        ON CONFLICT (provider, dedupe_key) DO NOTHING
        RETURNING id, provider, dedupe_key""",
    }
)

COUNT_DUPLICATE = both("""
    UPDATE events SET duplicates = duplicates + 1
    WHERE provider = :provider AND dedupe_key = :dedupe_key""")

# The events to apply, locked in id order: a second applier waits, then finds them no longer
# waiting. (Not SKIP LOCKED: a request counting a duplicate of one holds its row for a
# moment, and skipping then would leave the event unapplied until upkeep came by.)
EVENTS_TO_APPLY = each(
    {
        "postgresql": """
        SELECT * FROM events WHERE id IN :ids
          AND status IN ('received', 'unmatched', 'error') ORDER BY id FOR UPDATE""",
        "sqlite": """
        SELECT * FROM events WHERE id IN :ids
          AND status IN ('received', 'unmatched', 'error') ORDER BY id""",
    }
)

# Only an event still waiting: an error met after another process applied it must not
# reopen it (a reprocess would then count it twice).
SETTLE_EVENT = both("""
    UPDATE events
    SET status = :status, sub_task_id = :sub_task_id, matched_by = :matched_by,
        attempts = attempts + 1, error = :error,
        applied_at = CASE WHEN :applied THEN {now} ELSE applied_at END
    WHERE id = :id AND status IN ('received', 'unmatched', 'error')""")

# Fewest attempts first: each try counts one, so with more waiting than `:limit` every
# event gets its turn instead of the oldest being tried on every pass.
EVENTS_TO_RETRY = both("""
    SELECT id FROM events
    WHERE (status = 'unmatched' AND created_at >= {now} - :retry_seconds)
       OR (status = 'received' AND created_at <= {now} - :min_age)
       OR (status = 'error' AND attempts < :error_attempts)
    ORDER BY attempts, id LIMIT :limit""")

GIVE_UP_UNMATCHED = both("""
    UPDATE events SET status = 'given_up'
    WHERE status = 'unmatched' AND created_at < {now} - :retry_seconds""")

# -- matching, in the order of DESIGN.md's "Webhook resolution" ------------------------------------
# The first three take many values at once: (value, sub-task id) for each value found.
MATCH_BY_SUB_TASK = both("SELECT id AS value, id FROM sub_tasks WHERE id IN :values")
MATCH_BY_PROVIDER_ID = both("""
    SELECT provider_message_id AS value, min(id) AS id FROM sub_tasks
    WHERE provider_message_id IN :values GROUP BY provider_message_id""")
MATCH_BY_KEY = both("""
    SELECT idempotency_key AS value, id FROM sub_tasks WHERE idempotency_key IN :values""")
MATCH_BY_TASK_AND_RECIPIENT = both("""
    SELECT s.id FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id
    WHERE s.task_id = :task_id AND c.email = :recipient""")
MATCH_BY_RECENT_RECIPIENT = both("""
    SELECT s.id FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id
    WHERE c.email = :recipient AND s.sent_at >= {now} - :window
    ORDER BY s.sent_at DESC, s.id DESC LIMIT 1""")

# -- applying facts --------------------------------------------------------------------------------
# The sub-tasks a batch of facts is about, locked in id order before any is written, so two
# appliers never wait on each other in a circle. (SQLite's writer lock does this already.)
LOCK_SUB_TASKS = each(
    {
        "postgresql": "SELECT id FROM sub_tasks WHERE id IN :ids ORDER BY id FOR UPDATE",
        "sqlite": "SELECT id FROM sub_tasks WHERE id IN :ids",
    }
)

# The provider has the message: a sub-task whose outcome we did not know, or that waits for
# a resend of it, is sent. Rows under a lease are left to their worker (its fence).
_PROMOTE = """
    status = CASE WHEN status IN ('unknown', 'pending')
                    OR (status = 'failed' AND error_class = 'unknown') THEN 'sent'
                  ELSE status END,
    sent_at = CASE WHEN status IN ('unknown', 'pending')
                     OR (status = 'failed' AND error_class = 'unknown')
                   THEN coalesce(sent_at, :at) ELSE sent_at END,
    finished_at = CASE WHEN status IN ('unknown', 'pending')
                         OR (status = 'failed' AND error_class = 'unknown')
                       THEN coalesce(finished_at, {now}) ELSE finished_at END,
    provider_message_id = coalesce(provider_message_id, :provider_message_id),
    pinned_service_id = CASE WHEN status IN ('unknown', 'pending')
                             THEN NULL ELSE pinned_service_id END"""


def _first_seen(column: str) -> str:
    return f"{column} = CASE WHEN {column} IS NULL OR {column} > :at THEN :at ELSE {column} END"


_DELIVERED = _first_seen("delivered_at")
APPLY_FACT = {
    "accepted": both(f"UPDATE sub_tasks SET {_PROMOTE} WHERE id = :id"),
    "delivered": both(f"UPDATE sub_tasks SET {_PROMOTE}, {_DELIVERED} WHERE id = :id"),
    # An open implies delivery.
    "opened": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_DELIVERED}, {_first_seen("opened_at")},
               open_count = open_count + 1
        WHERE id = :id"""),
    "clicked": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_DELIVERED}, {_first_seen("clicked_at")},
               click_count = click_count + 1
        WHERE id = :id"""),
    # A hard bounce outranks a soft one, whichever comes first.
    "soft_bounce": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_first_seen("bounced_at")},
               bounce_type = CASE WHEN bounce_type = 'hard' THEN 'hard' ELSE 'soft' END
        WHERE id = :id"""),
    "hard_bounce": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_first_seen("bounced_at")}, bounce_type = 'hard'
        WHERE id = :id"""),
    "complained": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_DELIVERED}, {_first_seen("complained_at")}
        WHERE id = :id"""),
    "unsubscribed": both(f"""
        UPDATE sub_tasks SET {_PROMOTE}, {_first_seen("unsubscribed_at")} WHERE id = :id"""),
}

# A contact's suppression moves only up this order, so the final status does not depend on
# the order events arrive in.
SUPPRESSION_RANK = {"active": 0, "invalid": 1, "unsubscribed": 2, "bounced": 3, "complained": 4}
_RANK = (
    "CASE status "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in SUPPRESSION_RANK.items())
    + " ELSE 0 END"
)
SUPPRESS_CONTACT = both(f"""
    UPDATE contacts SET status = :status, status_reason = :reason, updated_at = {{now}}
    WHERE id = (SELECT contact_id FROM sub_tasks WHERE id = :sub_task_id)
      AND {_RANK} < :rank""")

# An operator's reprocess: a given-up event waits again like an unmatched one.
REOPEN_EVENTS = both("""
    UPDATE events SET status = 'unmatched' WHERE id IN :ids AND status = 'given_up'""")

# -- what `edm events list` and `GET /api/events` show, newest first, below `:before` -----------
EVENT_LIST = both("""
    SELECT e.id, e.provider, e.event, e.status, e.occurred_at, e.created_at, e.sub_task_id,
           s.task_id, e.matched_by, e.duplicates, e.recipient, e.error
    FROM events e LEFT JOIN sub_tasks s ON s.id = e.sub_task_id
    WHERE (CAST(:status AS VARCHAR(20)) IS NULL OR e.status = :status
           OR (:status = 'duplicate' AND e.duplicates > 0))
      AND (CAST(:task_id AS BIGINT) IS NULL OR s.task_id = :task_id OR e.ref_task_id = :task_id)
      AND e.id < :before
    ORDER BY e.id DESC LIMIT :limit""")

EVENT_IDS_BY_STATUS = both("""
    SELECT id FROM events WHERE status = :status ORDER BY id LIMIT :limit""")

EVENT_BY_KEY = both("""
    SELECT id, status FROM events WHERE provider = :provider AND dedupe_key = :dedupe_key""")

# Many logged requests taken at once by one processor; another processor skips them.
# A batch that failed after its claim (the database went away): its requests wait again
# at once, rather than until they are stale.
RELEASE_REQUESTS = both("""
    UPDATE webhook_requests SET status = 'received', processed_at = NULL
    WHERE id IN :ids AND status = 'processing'""")

CLAIM_REQUESTS = each(
    {
        "postgresql": """
        UPDATE webhook_requests SET status = 'processing', processed_at = {now}
        WHERE id = ANY(ARRAY(SELECT id FROM webhook_requests WHERE status = 'received'
                             ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED))
        RETURNING id, provider, body""",
        "sqlite": """
        UPDATE webhook_requests SET status = 'processing', processed_at = {now}
        WHERE id IN (SELECT id FROM webhook_requests WHERE status = 'received'
                     ORDER BY id LIMIT :limit)
        RETURNING id, provider, body""",
    }
)

# The soft bounces already applied to a contact's messages, for the soft-bounce limit.
CONTACT_SOFT_BOUNCES = both("""
    SELECT e.occurred_at FROM events e JOIN sub_tasks s ON s.id = e.sub_task_id
    WHERE s.contact_id = (SELECT contact_id FROM sub_tasks WHERE id = :sub_task_id)
      AND e.event = 'soft_bounce' AND e.status = 'applied'""")

# Held while a contact's soft bounces are counted, so two bounces applied at once both see
# each other (SQLite's writer lock does this already).
LOCK_CONTACT_OF = each(
    {
        "postgresql": """
        SELECT id FROM contacts
        WHERE id = (SELECT contact_id FROM sub_tasks WHERE id = :sub_task_id) FOR UPDATE""",
        "sqlite": "SELECT 1",
    }
)

# Requests whose body could not be parsed: `edm events list --status invalid`. They
# belong to no task: asked for a task's, there are none.
INVALID_REQUEST_LIST = both("""
    SELECT id, provider, 'request' AS event, status, received_at AS occurred_at,
           received_at AS created_at, NULL AS sub_task_id, NULL AS task_id, NULL AS matched_by,
           0 AS duplicates, NULL AS recipient, error
    FROM webhook_requests
    WHERE status = 'invalid' AND CAST(:task_id AS BIGINT) IS NULL AND id < :before
    ORDER BY id DESC LIMIT :limit""")
