"""Which sub-task an event is about, in the order of DESIGN.md's "Webhook resolution".

The first strategy that finds a sub-task wins, even when a later one would find another:
our own ids are trusted over the provider's, and both over a guess by address.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from edm.db import event_queries as eq
from edm.db.queries import query

# How far back "the most recent sub-task sent to this address" may look.
RECENT_RECIPIENT_WINDOW_SECONDS = 7 * 86400.0
# Our Message-ID is `<idempotency key@sender domain>`.
MESSAGE_ID = re.compile(r"^<?([^@<>\s]+)@[^<>\s]*>?$")


@dataclass(frozen=True)
class Match:
    sub_task_id: int
    strategy: str  # sub_task_id | provider_message_id | message_id | task_recipient | recipient


# The strategies that look a value up, in order, each one query for many events.
_BY_VALUE = (
    ("sub_task_id", eq.MATCH_BY_SUB_TASK, lambda event: event.ref_sub_task_id),
    ("provider_message_id", eq.MATCH_BY_PROVIDER_ID, lambda event: event.provider_message_id),
    ("message_id", eq.MATCH_BY_KEY, lambda event: _idempotency_key(event.message_id)),
)


def match_events(conn: Connection, events: Sequence) -> dict[int, Match]:  # type: ignore[type-arg]
    """The sub-task of each event that has one, by event id. `events` are rows of `events`
    (their ref_* columns and identifiers); a batch costs one query per strategy, not one
    per event, except for the guesses by address."""
    dialect = conn.dialect.name
    found: dict[int, Match] = {}
    waiting = list(events)
    for strategy, statement, value_of in _BY_VALUE:
        values = {value_of(event) for event in waiting} - {None, ""}
        if not values:
            continue
        rows = conn.execute(query(statement, dialect, "values"), {"values": sorted(values)})
        hits = {value: sub_task_id for value, sub_task_id in rows}
        for event in waiting:
            sub_task_id = hits.get(value_of(event))
            if sub_task_id is not None:
                found[event.id] = Match(int(sub_task_id), strategy)
        waiting = [event for event in waiting if event.id not in found]
    for event in waiting:
        guess = _by_recipient(conn, event)
        if guess is not None:
            found[event.id] = guess
    return found


def _by_recipient(conn: Connection, event) -> Match | None:  # type: ignore[no-untyped-def]
    dialect = conn.dialect.name
    recipient = (event.recipient or "").strip().lower() or None
    if recipient is None:
        return None
    if event.ref_task_id is not None:
        found = conn.execute(
            query(eq.MATCH_BY_TASK_AND_RECIPIENT, dialect),
            {"task_id": event.ref_task_id, "recipient": recipient},
        ).scalar()
        if found is not None:
            return Match(found, "task_recipient")
    found = conn.execute(
        query(eq.MATCH_BY_RECENT_RECIPIENT, dialect),
        {"recipient": recipient, "window": RECENT_RECIPIENT_WINDOW_SECONDS},
    ).scalar()
    return Match(found, "recipient") if found is not None else None


def _idempotency_key(message_id: str | None) -> str | None:
    if not message_id:
        return None
    found = MESSAGE_ID.match(message_id.strip())
    return found.group(1) if found else None
