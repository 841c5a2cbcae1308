"""Facts edm learns itself rather than from a provider: a recipient's click on our own
unsubscribe link. They go through the same event table and applier as webhooks, so the
sub-task, the contact and the task's statistics see them the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from edm.db import event_queries as eq
from edm.db.models import Contact, SubTask
from edm.db.queries import query
from edm.events.pipeline import apply_event, insert_facts

PROVIDER = "edm"


def record_unsubscribe(engine: Engine, sub_task_id: int) -> str:
    """Unsubscribe the contact of `sub_task_id`; the event's status (`applied`, or
    `duplicate` for a repeat, which changes nothing)."""
    params = {
        "request_id": None,
        "provider": PROVIDER,
        # One unsubscribe per message: clicking twice is the same fact.
        "dedupe_key": f"unsubscribe:{sub_task_id}",
        "event": "unsubscribed",
        "occurred_at": time.time(),
        "status": "received",
        "ref_sub_task_id": sub_task_id,
        "ref_task_id": None,
        "provider_message_id": None,
        "message_id": None,
        "recipient": None,
        "data": {"source": "unsubscribe link"},
    }
    with engine.begin() as conn:
        event_id = insert_facts(conn, [params]).get((PROVIDER, params["dedupe_key"]))
        if event_id is None:
            conn.execute(query(eq.COUNT_DUPLICATE, engine.dialect.name), params)
            earlier = conn.execute(query(eq.EVENT_BY_KEY, engine.dialect.name), params).one()
            if earlier.status not in ("received", "unmatched", "error"):
                return "duplicate"
            event_id = earlier.id  # the first click did not take: this one tries again
    return apply_event(engine, int(event_id))


@dataclass(frozen=True)
class Recipient:
    sub_task_id: int
    email: str
    unsubscribed: bool


def link_recipient(engine: Engine, sub_task_id: int, contact_id: int) -> Recipient | None:
    """The contact of a genuine link, or None when its sub-task is gone or belongs to
    another contact (a token signed with a key since rotated back, a hand-edited row)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(Contact.email, Contact.status, SubTask.unsubscribed_at)
            .join(Contact, Contact.id == SubTask.contact_id)
            .where(SubTask.id == sub_task_id, SubTask.contact_id == contact_id)
        ).first()
    if row is None:
        return None
    return Recipient(
        sub_task_id, row.email, row.status == "unsubscribed" or row.unsubscribed_at is not None
    )
