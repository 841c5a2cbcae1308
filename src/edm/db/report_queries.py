"""The SQL of `edm report` and of the forecasts (a task's ETA, `edm plan`), for both
databases (built like `queries.py`).

Reading only, and aggregates only: a report over a busy day reads a few counts per
service and per task, never the rows themselves. Every window is `:since` to `:now`, one
reading of the database's clock passed in, so the whole report speaks of one instant.
"""

from __future__ import annotations

from edm.db.queries import both

# -- report: provider calls by outcome ('sent' is a call the provider accepted) --------------
CALLS_BY_SERVICE = both("""
    SELECT service_id AS id, outcome, count(*) AS n, min(finished_at) AS first_at,
           max(finished_at) AS last_at
    FROM send_attempts WHERE finished_at >= :since AND finished_at <= :now
    GROUP BY service_id, outcome""")

CALLS_BY_TASK = both("""
    SELECT s.task_id AS id, a.outcome, count(*) AS n, min(a.finished_at) AS first_at,
           max(a.finished_at) AS last_at
    FROM send_attempts a JOIN sub_tasks s ON s.id = a.sub_task_id
    WHERE a.finished_at >= :since AND a.finished_at <= :now
    GROUP BY s.task_id, a.outcome""")

# -- report: what became of the sub-tasks sent in the window (their delivery facts) ------------
_FACTS = """count(*) AS sent,
           sum(CASE WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END) AS delivered,
           sum(CASE WHEN opened_at IS NOT NULL THEN 1 ELSE 0 END) AS opened,
           sum(CASE WHEN clicked_at IS NOT NULL THEN 1 ELSE 0 END) AS clicked,
           sum(CASE WHEN bounce_type IS NOT NULL THEN 1 ELSE 0 END) AS bounced,
           sum(CASE WHEN bounce_type = 'hard' THEN 1 ELSE 0 END) AS hard_bounced,
           sum(CASE WHEN complained_at IS NOT NULL THEN 1 ELSE 0 END) AS complained,
           sum(CASE WHEN unsubscribed_at IS NOT NULL THEN 1 ELSE 0 END) AS unsubscribed"""
_SENT_IN_WINDOW = "status = 'sent' AND sent_at >= :since AND sent_at <= :now"

FACTS_BY_SERVICE = both(f"""
    SELECT service_id AS id, {_FACTS}
    FROM sub_tasks WHERE {_SENT_IN_WINDOW} GROUP BY service_id""")

FACTS_BY_TASK = both(f"""
    SELECT task_id AS id, {_FACTS}
    FROM sub_tasks WHERE {_SENT_IN_WINDOW} GROUP BY task_id""")

# -- report: sub-tasks that failed in the window by class, and those of unknown outcome now ----
_ERROR_CLASS = "coalesce(error_class, 'unclassified')"
_FAILED_IN_WINDOW = "status = 'failed' AND finished_at >= :since AND finished_at <= :now"

FAILED_BY_SERVICE = both(f"""
    SELECT service_id AS id, {_ERROR_CLASS} AS error_class, count(*) AS n
    FROM sub_tasks WHERE {_FAILED_IN_WINDOW} GROUP BY service_id, {_ERROR_CLASS}""")

FAILED_BY_TASK = both(f"""
    SELECT task_id AS id, {_ERROR_CLASS} AS error_class, count(*) AS n
    FROM sub_tasks WHERE {_FAILED_IN_WINDOW} GROUP BY task_id, {_ERROR_CLASS}""")

UNKNOWN_BY_SERVICE = both("""
    SELECT service_id AS id, count(*) AS n FROM sub_tasks WHERE status = 'unknown'
    GROUP BY service_id""")

UNKNOWN_BY_TASK = both("""
    SELECT task_id AS id, count(*) AS n FROM sub_tasks WHERE status = 'unknown'
    GROUP BY task_id""")

SERVICE_ROWS = both("""
    SELECT id, name, interval_seconds, daily_quota FROM services ORDER BY id""")

TASK_NAMES = both("""
    SELECT id, name, status FROM tasks WHERE id IN :ids ORDER BY id""")

# -- report: webhook lag, received less occurred, of the providers' events in the window.
# The nearest-rank percentile (PostgreSQL's percentile_disc): the smallest lag whose
# cumulative share reaches the fraction; cume_dist is a window function on both databases.
# Our own unsubscribe link (provider `edm`) is not a webhook and has no lag.
WEBHOOK_LAG = both("""
    SELECT count(*) AS n,
           min(CASE WHEN share >= :p50 THEN lag END) AS p50,
           min(CASE WHEN share >= :p95 THEN lag END) AS p95,
           max(lag) AS most
    FROM (SELECT created_at - occurred_at AS lag,
                 cume_dist() OVER (ORDER BY created_at - occurred_at) AS share
          FROM events
          WHERE created_at >= :since AND created_at <= :now AND provider <> 'edm') AS lags""")

# -- forecasts ---------------------------------------------------------------------------------
# Running tasks in the order the claim serves them: best priority first, then by id (at
# one priority the claim takes rows by sub-task id, so the older task's rows go first).
RUNNING_TASKS = both("""
    SELECT id, name, priority, delivery_policy FROM tasks WHERE status = 'running'
    ORDER BY priority DESC, id""")

# What each task has left, by the service its rows are bound to: pending rows by their pin
# (NULL: any service), rows in flight and of unknown outcome by the service that has them.
# Unknown rows out of attempts will be failed, never sent: `unknown_spent`. In three parts,
# each read from an index: a running task of a million has most of its rows pending, and
# grouping them by pin read each row (150 ms); pinned rows are few and have their own
# partial index, and the count of all pending rows comes from the claim's index alone.
PENDING_BY_TASK = both("""
    SELECT task_id, count(*) AS n FROM sub_tasks
    WHERE task_id IN :task_ids AND status = 'pending' GROUP BY task_id""")
PINNED_BY_TASK = both("""
    SELECT task_id, pinned_service_id AS service_id, count(*) AS n FROM sub_tasks
    WHERE task_id IN :task_ids AND status = 'pending' AND pinned_service_id IS NOT NULL
    GROUP BY task_id, pinned_service_id""")
_POOL_STATUS = """CASE WHEN status = 'unknown' AND attempts >= :max_attempts THEN 'unknown_spent'
                     ELSE status END"""
IN_FLIGHT_BY_TASK = both(f"""
    SELECT task_id, {_POOL_STATUS} AS status, service_id, count(*) AS n
    FROM sub_tasks
    WHERE task_id IN :task_ids AND status IN ('allocated', 'sending', 'unknown')
    GROUP BY task_id, {_POOL_STATUS}, service_id""")

TASK_SERVICES = both("""
    SELECT task_id, service_id FROM task_services WHERE task_id IN :task_ids""")

# The pace row's booked slot (GCRA: the next send may not come before it).
NEXT_SLOTS = both("SELECT id, next_send_at FROM services")
