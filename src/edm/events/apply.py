"""Applying one event's fact to its sub-task and contact, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass

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
    data: dict | None = None,
    soft_bounces: SoftBounceLimit | None = None,
) -> None:
    dialect = conn.dialect.name
    conn.execute(
        query(eq.APPLY_FACT[event], dialect),
        {"id": sub_task_id, "at": occurred_at, "provider_message_id": provider_message_id},
    )
    suppression = SUPPRESSES.get(event)
    if event == "hard_bounce" and (data or {}).get("address_invalid") is True:
        suppression = ("invalid", "the address does not exist")
    if event == "soft_bounce" and soft_bounces is not None:
        conn.execute(query(eq.LOCK_CONTACT_OF, dialect), {"sub_task_id": sub_task_id})
        times = list(
            conn.execute(
                query(eq.CONTACT_SOFT_BOUNCES, dialect), {"sub_task_id": sub_task_id}
            ).scalars()
        )
        if soft_bounces.reached([*times, occurred_at]):
            suppression = ("bounced", f"{soft_bounces.limit} soft bounces")
    if suppression:
        status, reason = suppression
        conn.execute(
            query(eq.SUPPRESS_CONTACT, dialect),
            {
                "sub_task_id": sub_task_id,
                "status": status,
                "reason": reason,
                "rank": eq.SUPPRESSION_RANK[status],
            },
        )


@dataclass(frozen=True)
class SoftBounceLimit:
    """`limit` soft bounces within `days` make a contact `bounced`.

    Decided on the set of bounce times, not the order they arrived in, so the outcome
    does not depend on which bounce came last.
    """

    limit: int
    days: float

    def reached(self, times: list[float]) -> bool:
        ordered = sorted(set(times))
        window = self.days * 86400.0
        return any(
            ordered[i + self.limit - 1] - ordered[i] <= window
            for i in range(len(ordered) - self.limit + 1)
        )
