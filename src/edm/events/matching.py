"""Which sub-task an event is about, in the order of DESIGN.md's "Webhook resolution".

The first strategy that finds a sub-task wins, even when a later one would find another:
our own ids are trusted over the provider's, and both over a guess by address.
"""

from __future__ import annotations

import re
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


def match(conn: Connection, event) -> Match | None:  # type: ignore[no-untyped-def]
    """`event` is a row of `events` (its ref_* columns and identifiers)."""
    dialect = conn.dialect.name

    def first(statement: dict[str, str], **params: object) -> int | None:
        return conn.execute(query(statement, dialect), params).scalar()

    if event.ref_sub_task_id is not None:
        found = first(eq.MATCH_BY_SUB_TASK, value=event.ref_sub_task_id)
        if found is not None:
            return Match(found, "sub_task_id")
    if event.provider_message_id:
        found = first(eq.MATCH_BY_PROVIDER_ID, value=event.provider_message_id)
        if found is not None:
            return Match(found, "provider_message_id")
    key = _idempotency_key(event.message_id)
    if key:
        found = first(eq.MATCH_BY_KEY, value=key)
        if found is not None:
            return Match(found, "message_id")
    recipient = (event.recipient or "").strip().lower() or None
    if recipient and event.ref_task_id is not None:
        found = first(
            eq.MATCH_BY_TASK_AND_RECIPIENT, task_id=event.ref_task_id, recipient=recipient
        )
        if found is not None:
            return Match(found, "task_recipient")
    if recipient:
        found = first(
            eq.MATCH_BY_RECENT_RECIPIENT,
            recipient=recipient,
            window=RECENT_RECIPIENT_WINDOW_SECONDS,
        )
        if found is not None:
            return Match(found, "recipient")
    return None


def _idempotency_key(message_id: str | None) -> str | None:
    if not message_id:
        return None
    found = MESSAGE_ID.match(message_id.strip())
    return found.group(1) if found else None
