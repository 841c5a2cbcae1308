"""Who an unsubscribe link names: read-only, for the confirmation page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from edm.db.models import Contact, SubTask


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


def masked(email: str) -> str:
    """`a…e@example.com`: enough for the owner to recognise, little for anyone the link
    was forwarded to."""
    local, at, domain = email.rpartition("@")
    if not at:
        local, domain = email, ""
    shown = local[:1] + "…" + local[-1:] if len(local) > 2 else local[:1] + "…"
    return f"{shown}@{domain}" if at else shown
