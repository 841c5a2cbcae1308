"""Contact lists: named sets of contacts. A contact belongs to any number of lists; a
task's audience is made of lists (`edm.audience.selection`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, select

from edm import validation
from edm.db.dialects import insert_ignoring
from edm.db.models import Contact, ContactList, ListMember, Task, TaskList

LISTS = ContactList.__table__
MEMBERS = ListMember.__table__
CONTACTS = Contact.__table__


class ListInputError(ValueError):
    """Bad input for a list command; the message names what is wrong."""


class ListNotFound(ListInputError):
    pass


class ListExists(ListInputError):
    pass


class ListInUse(ListInputError):
    """A task that can still send was built from the list."""


@dataclass(frozen=True)
class ListView:
    id: int
    name: str
    description: str | None
    members: int
    active: int  # members that can be sent to
    created_at: float


def create_list(engine: Engine, name: str, description: str | None = None) -> int:
    name = validation.label(name, "list name", error=ListInputError)
    if description is not None:
        description = validation.db_text(description, "--description", error=ListInputError)
    with engine.begin() as conn:
        if conn.scalar(select(LISTS.c.id).where(LISTS.c.name == name)) is not None:
            raise ListExists(f"list {name!r} already exists")
        return int(
            conn.execute(
                LISTS.insert()
                .values(name=name, description=description, created_at=time.time())
                .returning(LISTS.c.id)
            ).scalar_one()
        )


def ensure_list(conn: Connection, name: str) -> tuple[int, bool]:
    """The list's id, made if it does not exist: (id, made)."""
    name = validation.label(name, "--list", error=ListInputError)
    found = conn.scalar(select(LISTS.c.id).where(LISTS.c.name == name))
    if found is not None:
        return int(found), False
    made = conn.execute(
        LISTS.insert().values(name=name, created_at=time.time()).returning(LISTS.c.id)
    ).scalar_one()
    return int(made), True


def delete_list(engine: Engine, name: str) -> int:
    """Delete a list (its contacts stay); how many members it had. Refused while a task
    that can still send was built from it."""
    with engine.begin() as conn:
        (list_id,) = list_ids(conn, [name], "list")
        tasks = TaskList.__table__
        busy = (
            conn.execute(
                select(Task.id)
                .join(tasks, tasks.c.task_id == Task.id)
                .where(tasks.c.list_id == list_id, Task.status.not_in(("completed", "cancelled")))
                .order_by(Task.id)
            )
            .scalars()
            .all()
        )
        if busy:
            shown = ", ".join(str(task_id) for task_id in busy[:10])
            raise ListInUse(
                f"list {name!r} is the audience of task {shown}, which can still send:"
                " cancel it or let it complete first"
            )
        members = conn.scalar(
            select(func.count()).select_from(MEMBERS).where(MEMBERS.c.list_id == list_id)
        )
        conn.execute(tasks.delete().where(tasks.c.list_id == list_id))
        conn.execute(LISTS.delete().where(LISTS.c.id == list_id))
    return int(members or 0)


def list_lists(engine: Engine) -> list[ListView]:
    members = (
        select(
            MEMBERS.c.list_id,
            func.count().label("members"),
            func.count().filter(CONTACTS.c.status == "active").label("active"),
        )
        .join(CONTACTS, CONTACTS.c.id == MEMBERS.c.contact_id)
        .group_by(MEMBERS.c.list_id)
        .subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(LISTS, members.c.members, members.c.active)
            .outerjoin(members, members.c.list_id == LISTS.c.id)
            .order_by(LISTS.c.name)
        ).all()
    return [
        ListView(r.id, r.name, r.description, int(r.members or 0), int(r.active or 0), r.created_at)
        for r in rows
    ]


def list_ids(conn: Connection, names: list[str], option: str) -> list[int]:
    """The ids of the named lists, in order; an unknown name is an error naming it."""
    found = dict(
        conn.execute(select(LISTS.c.name, LISTS.c.id).where(LISTS.c.name.in_(names))).all()
    )
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ListNotFound(
            f"{option}: no list named {', '.join(repr(n) for n in unknown)}"
            " (`edm list list` shows them)"
        )
    return [int(found[name]) for name in names]


def add_members(conn: Connection, list_id: int, contact_ids: list[int]) -> None:
    """Put contacts on a list (those already on it stay as they are)."""
    if not contact_ids:
        return
    now = time.time()
    conn.execute(
        insert_ignoring(conn, MEMBERS, ["list_id", "contact_id"]),
        [{"list_id": list_id, "contact_id": cid, "added_at": now} for cid in contact_ids],
    )


def remove_members(conn: Connection, list_id: int, contact_ids: list[int]) -> int:
    return conn.execute(
        MEMBERS.delete().where(MEMBERS.c.list_id == list_id, MEMBERS.c.contact_id.in_(contact_ids))
    ).rowcount
