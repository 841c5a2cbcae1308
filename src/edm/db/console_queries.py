"""The SQL of the console's task page, for both databases (built like `queries.py`).

Each reads one task's rows through the `(task_id, ...)` indexes, so the page costs the
same whatever the rest of the installation holds.
"""

from __future__ import annotations

from edm.db.queries import both, each

# Sub-tasks of a task by the service that took them (NULL: none yet) and status.
TASK_SPLIT = both("""
    SELECT s.service_id, v.name, s.status, count(*) AS n
    FROM sub_tasks s LEFT JOIN services v ON v.id = s.service_id
    WHERE s.task_id = :task_id
    GROUP BY s.service_id, v.name, s.status""")

# Sends of a task per minute since `:since` (epoch seconds), by service.
TASK_SENT_PER_MINUTE = each(
    {
        "postgresql": """
            SELECT CAST(floor(sent_at / 60) AS bigint) AS minute, service_id, count(*) AS n
            FROM sub_tasks WHERE task_id = :task_id AND sent_at >= :since
            GROUP BY 1, 2""",
        "sqlite": """
            SELECT CAST(sent_at / 60 AS INTEGER) AS minute, service_id, count(*) AS n
            FROM sub_tasks WHERE task_id = :task_id AND sent_at >= :since
            GROUP BY 1, 2""",
    }
)

# Rows of a task whose lease ran out (the reaper takes them back), and its oldest one.
TASK_PAST_LEASE = both("""
    SELECT count(*) AS rows, min(lease_expires_at) AS oldest FROM sub_tasks
    WHERE task_id = :task_id AND status IN ('allocated', 'sending')
      AND lease_expires_at < {now}""")

# A task's `unknown` rows (no answer from the provider) and the oldest of them.
TASK_UNKNOWN = both("""
    SELECT count(*) AS rows, min(coalesce(finished_at, sending_at, first_sending_at)) AS oldest
    FROM sub_tasks WHERE task_id = :task_id AND status = 'unknown'""")
