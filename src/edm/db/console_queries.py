"""The SQL of the console's task page, for both databases (built like `queries.py`); the
rest of what it shows comes from `task_views` and `forecast`.

Each reads one task's rows through its `(task_id, status)` index, so the page costs the
same whatever the rest of the installation holds.
"""

from __future__ import annotations

from edm.db.queries import both

# Rows of a task whose lease ran out (the reaper takes them back), and its oldest one.
TASK_PAST_LEASE = both("""
    SELECT count(*) AS rows, min(lease_expires_at) AS oldest FROM sub_tasks
    WHERE task_id = :task_id AND status IN ('allocated', 'sending')
      AND lease_expires_at < {now}""")

# A task's `unknown` rows (no answer from the provider) and the oldest of them.
TASK_UNKNOWN = both("""
    SELECT count(*) AS rows, min(coalesce(finished_at, sending_at, first_sending_at)) AS oldest
    FROM sub_tasks WHERE task_id = :task_id AND status = 'unknown'""")
