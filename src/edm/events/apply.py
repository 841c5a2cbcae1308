"""Applying one event's fact to its sub-task and contact, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from edm.db import event_queries as eq
from edm.db.queries import query
from edm.funnels import keeping_funnels

# Events that suppress the contact: (contact status, reason). The reasons name no
# sub-task or time, so the final state is the same whichever event came first.
SUPPRESSES = {
    "hard_bounce": ("bounced", "hard bounce"),
    "complained": ("complained", "spam complaint"),
    "unsubscribed": ("unsubscribed", "unsubscribed"),
}


@dataclass(frozen=True)
class Fact:
    """One recorded event, matched to its sub-task."""

    sub_task_id: int
    event: str
    occurred_at: float
    provider_message_id: str | None = None
    data: dict[str, Any] | None = None


def apply_facts(
    conn: Connection, facts: list[Fact], soft_bounces: SoftBounceLimit | None = None
) -> None:
    """Apply facts in the caller's transaction, after their events are marked applied (so a
    contact's soft bounces count those of this batch too).

    Facts about sub-tasks commute (first-seen times take the minimum, counters add), so
    each kind is one statement for all its facts; the contact rules then run fact by fact.
    """
    dialect = conn.dialect.name
    ordered = sorted(facts, key=lambda fact: fact.sub_task_id)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for fact in ordered:
        by_kind.setdefault(fact.event, []).append(
            {
                "id": fact.sub_task_id,
                "at": fact.occurred_at,
                "provider_message_id": fact.provider_message_id,
            }
        )
    with keeping_funnels(conn, [fact.sub_task_id for fact in ordered]):
        for kind, params in by_kind.items():
            conn.execute(query(eq.APPLY_FACT[kind], dialect), params)
    for fact in ordered:
        suppression = _suppression(conn, fact, soft_bounces)
        if suppression:
            status, reason = suppression
            conn.execute(
                query(eq.SUPPRESS_CONTACT, dialect),
                {
                    "sub_task_id": fact.sub_task_id,
                    "status": status,
                    "reason": reason,
                    "rank": eq.SUPPRESSION_RANK[status],
                },
            )


def _suppression(
    conn: Connection, fact: Fact, soft_bounces: SoftBounceLimit | None
) -> tuple[str, str] | None:
    """The (status, reason) this fact gives its contact, if any."""
    if fact.event == "hard_bounce" and (fact.data or {}).get("address_invalid") is True:
        return ("invalid", "the address does not exist")
    if fact.event == "soft_bounce" and soft_bounces is not None:
        dialect = conn.dialect.name
        conn.execute(query(eq.LOCK_CONTACT_OF, dialect), {"sub_task_id": fact.sub_task_id})
        times = conn.execute(
            query(eq.CONTACT_SOFT_BOUNCES, dialect), {"sub_task_id": fact.sub_task_id}
        ).scalars()
        if soft_bounces.reached([*times, fact.occurred_at]):
            return ("bounced", f"{soft_bounces.limit} soft bounces")
        return None
    return SUPPRESSES.get(fact.event)


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
