"""Applying one event's fact to its sub-task and contact, in the caller's transaction."""

from __future__ import annotations

from sqlalchemy import Connection

from edm.db import event_queries as eq
from edm.db.queries import query

# Events that suppress the contact: (contact status, reason). The reasons name no
# sub-task or time, so the final state is the same whichever event came first.
SUPPRESSES = {
    "hard_bounce": ("bounced", "hard bounce"),
    "complained": ("complained", "spam complaint"),
    "unsubscribed": ("unsubscribed", "unsubscribed"),
}


def apply_fact(
    conn: Connection,
    sub_task_id: int,
    event: str,
    occurred_at: float,
    provider_message_id: str | None = None,
) -> None:
    dialect = conn.dialect.name
    conn.execute(
        query(eq.APPLY_FACT[event], dialect),
        {"id": sub_task_id, "at": occurred_at, "provider_message_id": provider_message_id},
    )
    if event in SUPPRESSES:
        status, reason = SUPPRESSES[event]
        conn.execute(
            query(eq.SUPPRESS_CONTACT, dialect),
            {
                "sub_task_id": sub_task_id,
                "status": status,
                "reason": reason,
                "rank": eq.SUPPRESSION_RANK[status],
            },
        )
