"""The SQL of `edm diagnose`, for both databases (built like `queries.py`).

Reading only. Every age is measured against one reading of the database's clock, passed
in as `:now`, so the whole diagnosis speaks of the same instant.
"""

from __future__ import annotations

from edm.db.queries import both

# The tasks an installation-wide diagnosis looks at: those that can still send, and
# scheduled ones whose time has come (they wait for an instance's upkeep).
OPEN_TASKS = both("""
    SELECT id, name, status, status_reason, delivery_policy, priority, created_at,
           scheduled_at, started_at, completed_at
    FROM tasks
    WHERE status IN ('running', 'paused')
       OR (status = 'scheduled' AND scheduled_at <= :now)
    ORDER BY id""")

# Since when each sub-task has been in its status, as far as its row records it: pending
# since it fell due (not before its task started), allocated since its claim (the lease
# less its length: at the latest), sending since the call, unknown since the call ended,
# the rest since they finished.
_SINCE = """CASE status
        WHEN 'pending' THEN CASE WHEN next_attempt_at > :started THEN next_attempt_at
                                 ELSE :started END
        WHEN 'allocated' THEN lease_expires_at - :lease_seconds
        WHEN 'sending' THEN sending_at
        WHEN 'sent' THEN sent_at
        WHEN 'unknown' THEN coalesce(finished_at, sending_at, first_sending_at)
        ELSE finished_at END"""

STATUS_AGES = both(f"""
    SELECT status, count(*) AS n, min({_SINCE}) AS since
    FROM sub_tasks WHERE task_id = :task_id GROUP BY status""")

# The row of one status that has been in it longest (the lowest id among equals).
OLDEST_IN_STATUS = both(f"""
    SELECT min(id) FROM sub_tasks
    WHERE task_id = :task_id AND status = :status AND {_SINCE} <= :since""")

OLDEST_IN_STATUS_ANY = both("""
    SELECT min(id) FROM sub_tasks WHERE task_id = :task_id AND status = :status""")

# Rows whose lease ran out more than `:grace` ago: a running reaper takes them back
# within a pass, so these mean no reaper runs.
PAST_LEASE = both("""
    SELECT count(*) AS n, min(lease_expires_at) AS oldest FROM sub_tasks
    WHERE task_id = :task_id AND status IN ('allocated', 'sending')
      AND lease_expires_at < :now - :grace""")

# Pending rows not due yet (a retry's back-off, a same-key resend's delay).
WAITING_RETRY = both("""
    SELECT count(*) AS n, min(next_attempt_at) AS next_due FROM sub_tasks
    WHERE task_id = :task_id AND status = 'pending' AND next_attempt_at > :now""")

TASK_SENT_SINCE = both("""
    SELECT count(*) FROM sub_tasks
    WHERE task_id = :task_id AND status = 'sent' AND sent_at >= :since""")

TASK_SERVICE_IDS = both("""
    SELECT service_id FROM task_services WHERE task_id = :task_id ORDER BY service_id""")

# Each service with its live workers, its recent sends (the measured pace) and the error
# its newest worker recorded. Each subquery walks one service's rows by an index.
SERVICES = both("""
    SELECT s.id, s.name, s.provider, s.enabled, s.frozen, s.frozen_reason, s.frozen_at,
           s.frozen_until,
           s.interval_seconds, s.daily_quota, s.quota_day, s.quota_used, s.paused_until,
           s.last_error, s.last_error_at,
           (SELECT count(*) FROM worker_heartbeats h
            WHERE h.service_id = s.id AND h.state = 'running'
              AND h.beat_at >= :now - :heartbeat) AS live_workers,
           (SELECT max(h.beat_at) FROM worker_heartbeats h
            WHERE h.service_id = s.id AND h.state = 'running') AS last_beat,
           (SELECT h.last_error FROM worker_heartbeats h
            WHERE h.service_id = s.id ORDER BY h.beat_at DESC LIMIT 1) AS worker_error,
           (SELECT count(*) FROM send_attempts a
            WHERE a.service_id = s.id AND a.outcome = 'sent'
              AND a.finished_at >= :now - :window) AS sent_recently,
           (SELECT min(a.finished_at) FROM send_attempts a
            WHERE a.service_id = s.id AND a.outcome = 'sent'
              AND a.finished_at >= :now - :window) AS first_recent,
           (SELECT max(a.finished_at) FROM send_attempts a
            WHERE a.service_id = s.id AND a.outcome = 'sent'
              AND a.finished_at >= :now - :window) AS last_recent
    FROM services s ORDER BY s.id""")

# A service's share of some tasks: the rows it sent, and the pending rows pinned to it
# (a same-key resend that only it can make).
SENT_BY_SERVICE = both("""
    SELECT service_id, count(*) AS n FROM sub_tasks
    WHERE task_id IN :task_ids AND status = 'sent' GROUP BY service_id""")

PINNED_PENDING = both("""
    SELECT pinned_service_id AS service_id, count(*) AS n FROM sub_tasks
    WHERE task_id IN :task_ids AND status = 'pending' AND pinned_service_id IS NOT NULL
    GROUP BY pinned_service_id""")

# Webhook events of one task by type and result, and the last one received.
TASK_EVENTS = both("""
    SELECT e.event, e.status, count(*) AS n FROM events e
    JOIN sub_tasks s ON s.id = e.sub_task_id
    WHERE s.task_id = :task_id GROUP BY e.event, e.status ORDER BY e.event, e.status""")

TASK_LAST_EVENT = both("""
    SELECT e.id, e.provider, e.event, e.status, e.occurred_at, e.created_at, e.sub_task_id
    FROM events e JOIN sub_tasks s ON s.id = e.sub_task_id
    WHERE s.task_id = :task_id ORDER BY e.created_at DESC, e.id DESC LIMIT 1""")

# The installation's events received since `:since`, matched or not.
RECENT_EVENTS = both("""
    SELECT event, status, count(*) AS n FROM events
    WHERE created_at >= :since GROUP BY event, status ORDER BY event, status""")

LAST_EVENT = both("""
    SELECT id, provider, event, status, occurred_at, created_at, sub_task_id
    FROM events ORDER BY created_at DESC, id DESC LIMIT 1""")
