"""Each task's funnel, kept in `task_funnels` as delivery facts change.

Counting a task's funnel from its rows reads every one of them: 140 ms of both cores for a
task of a million, on every refresh of its page. Instead, each statement that changes
sub-tasks' facts (applying events, the facts' repair, deleting a contact) runs inside
`keeping_funnels`, which reads those sub-tasks' facts before and after it and adds the
difference to their tasks' rows, in the same transaction. The first read locks the
sub-tasks, so the difference is this transaction's alone. The invariants check recounts
the funnels, and the repair loop counts a drifted one again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from edm.db import queries as q

FACTS = (
    "delivered",
    "opened",
    "clicked",
    "hard_bounced",
    "soft_bounced",
    "complained",
    "unsubscribed",
)


@contextmanager
def keeping_funnels(conn: Connection, sub_task_ids: Collection[int]) -> Iterator[None]:
    """Run the block (which changes the facts of these sub-tasks, or deletes them), then
    add what it changed to their tasks' funnels."""
    ids = sorted(set(sub_task_ids))
    before = _facts(conn, ids)
    yield
    after = _facts(conn, ids)
    changes: dict[int, dict[str, int]] = {}
    for sub_task_id in before.keys() | after.keys():
        was, now = before.get(sub_task_id), after.get(sub_task_id)
        task_id = (now or was)[0]  # type: ignore[index]
        change = changes.setdefault(task_id, dict.fromkeys(FACTS, 0))
        for i, fact in enumerate(FACTS, start=1):
            change[fact] += (now[i] if now else 0) - (was[i] if was else 0)
    added = [
        {"task_id": task_id, **change}
        for task_id, change in sorted(changes.items())  # rows locked in one order
        if any(change.values())
    ]
    if added:
        conn.execute(q.query(q.ADD_TO_FUNNEL, conn.dialect.name), added)


def kept_funnel(conn: Connection, task_id: int) -> dict[str, int]:
    """The task's sub-tasks with each delivery fact (see `TaskView.funnel`)."""
    row = conn.execute(q.query(q.KEPT_FUNNEL, conn.dialect.name), {"task_id": task_id}).first()
    return {fact: int(row._mapping[fact]) if row else 0 for fact in FACTS}


def _facts(conn: Connection, ids: list[int]) -> dict[int, tuple[int, ...]]:
    """(task id, then 0 or 1 for each of FACTS) of each of these sub-tasks that exists."""
    if not ids:
        return {}
    rows = conn.execute(q.query(q.FUNNEL_FACTS_OF, conn.dialect.name, "ids"), {"ids": ids})
    return {row.id: (row.task_id, *(int(row._mapping[f]) for f in FACTS)) for row in rows}
