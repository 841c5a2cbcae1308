"""One contact at a time: add, show, update, delete, list; and every contact out as CSV.

A contact made or changed here obeys the import's rules (`edm.contacts.rows`): the
address is checked and lower-cased, field keys are lower-cased like the import's column
names, values are stripped and at most MAX_FIELD_CHARS long. So a contact added by hand
and one imported are alike, and an export imports back as it was.

Nothing here changes a contact's status: suppression comes from events and imports, and
only `edm contacts reactivate` takes it back.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from edm import validation
from edm.audience.lists import ListInputError, add_members, list_ids, remove_members
from edm.contacts.addresses import InvalidAddress, normalise_email, valid_email
from edm.contacts.rows import MAX_FIELD_CHARS, NAME_CHARS
from edm.contacts.shown import cut
from edm.db.models import CONTACT_STATUSES, Contact, ContactList, ListMember, SubTask
from edm.db.queries import hold_expansion_lock
from edm.funnels import keeping_funnels

# The columns the import reads as themselves (`rows.Layout`); any other is a field.
KNOWN_COLUMNS = ("email", "name", "status")
MAX_LIMIT = 1000
# Rows fetched at a time by an export: memory stays flat whatever the number of contacts.
EXPORT_BATCH = 1000
# A sub-task in these states is in a worker's hands; deleting its contact under it would
# leave the worker sending to a row that no longer exists.
IN_FLIGHT = ("allocated", "sending")


class ContactInputError(ValueError):
    """Bad input for a contact command; the message names what is wrong."""


class ContactNotFound(ContactInputError):
    pass


class ContactExists(ContactInputError):
    pass


class ContactListUnknown(ContactInputError):
    pass


class ContactBusy(ContactInputError):
    """One of its sub-tasks is being sent right now."""


@dataclass(frozen=True)
class ContactSummary:
    id: int
    email: str
    name: str | None
    status: str
    status_reason: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ContactDetail:
    id: int
    email: str
    name: str | None
    fields: dict[str, Any]
    status: str
    status_reason: str | None
    lists: tuple[str, ...]  # names, sorted
    created_at: float
    updated_at: float
    sub_tasks: dict[str, int]  # its sub-tasks over all tasks, counted by status
    last_sent_at: float | None


# -- checking input --------------------------------------------------------------------------


def parse_fields(pairs: Iterable[str], option: str = "--field") -> dict[str, str]:
    """`KEY=VALUE` pairs as checked fields; a later pair for the same key wins."""
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ContactInputError(f"{option} must be KEY=VALUE, not {cut(pair)!r}")
        fields[key] = value
    return check_fields(fields, option)


def check_fields(fields: dict[str, str], option: str = "--field") -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in fields.items():
        name = field_key(key, option)
        checked[name] = _field_value(value, f"{option} {name}")
    return checked


def field_key(key: str, option: str) -> str:
    """A key as the import would read it back from a column name: stripped, lower-cased."""
    name = validation.label(key, f"a {option} key", error=ContactInputError).lower()
    if name in KNOWN_COLUMNS:
        raise ContactInputError(
            f"{option}: {name!r} is not a field but the contact's own {name}"
            + (" (--name sets it)" if name == "name" else "")
        )
    return name


def _field_value(value: str, what: str) -> str:
    value = validation.db_text(value.strip(), what, error=ContactInputError)
    if len(value) > MAX_FIELD_CHARS:
        raise ContactInputError(
            f"{what} is {len(value):,} characters long (at most {MAX_FIELD_CHARS:,})"
        )
    return value


def _name(value: str | None) -> str | None:
    """None: not given; "": no name. A name goes into the To: header: one line."""
    if value is None or not value.strip():
        return None if value is None else ""
    return validation.label(value, "--name", error=ContactInputError, max_length=NAME_CHARS)


def _new_address(email: str) -> str:
    try:
        return normalise_email(validation.db_text(email, "EMAIL", error=ContactInputError))
    except InvalidAddress as exc:
        raise ContactInputError(f"{cut(email)!r} is not an email address: {exc}") from None


def _status(status: str | None) -> str | None:
    if status is None:
        return None
    wanted = status.strip().lower()
    if wanted not in CONTACT_STATUSES:
        raise ContactInputError(
            f"--status must be one of {', '.join(CONTACT_STATUSES)}, not {cut(status)!r}"
        )
    return wanted


def _lists(conn: Connection, names: Sequence[str], option: str) -> list[int]:
    """The ids of lists that must exist: naming one is no way to make it."""
    if not names:
        return []
    for name in names:
        validation.db_text(name, option, error=ContactInputError)
    try:
        return list_ids(conn, list(dict.fromkeys(names)), option)
    except ListInputError as exc:
        raise ContactListUnknown(f"{exc}; `edm list create NAME` makes one") from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- one contact -----------------------------------------------------------------------------


def _find(conn: Connection, email: str, *, lock: bool = False) -> Row[Any]:
    """The contact with this address; as given too, for one stored unchecked (`add_contacts`)."""
    email = validation.db_text(email, "EMAIL", error=ContactInputError)
    key = valid_email(email) or email.strip().lower()
    query = select(Contact.__table__).where(Contact.email == key)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise ContactNotFound(f"no contact has the address {cut(email)!r}")
    return row


def _detail(conn: Connection, contact_id: int) -> ContactDetail:
    row = conn.execute(select(Contact.__table__).where(Contact.id == contact_id)).one()
    lists = conn.scalars(
        select(ContactList.name)
        .join(ListMember, ListMember.list_id == ContactList.id)
        .where(ListMember.contact_id == contact_id)
        .order_by(ContactList.name)
    ).all()
    counts = conn.execute(
        select(SubTask.status, func.count())
        .where(SubTask.contact_id == contact_id)
        .group_by(SubTask.status)
        .order_by(SubTask.status)
    ).all()
    last_sent = conn.scalar(
        select(func.max(SubTask.sent_at)).where(SubTask.contact_id == contact_id)
    )
    return ContactDetail(
        id=row.id,
        email=row.email,
        name=row.name,
        fields=dict(row.fields or {}),
        status=row.status,
        status_reason=row.status_reason,
        lists=tuple(lists),
        created_at=row.created_at,
        updated_at=row.updated_at,
        sub_tasks={status: int(n) for status, n in counts},
        last_sent_at=last_sent,
    )


def add_contact(
    engine: Engine,
    email: str,
    *,
    name: str | None = None,
    fields: dict[str, str] | None = None,
    lists: Sequence[str] = (),
) -> int:
    """Add one active contact, on the named lists; its id. An existing address is refused,
    not merged: an update is asked for by name."""
    address = _new_address(email)
    name = _name(name) or None
    fields = check_fields(fields or {})
    exists = ContactExists(f"{address} already exists: `edm contacts update {address}` changes it")
    try:
        with engine.begin() as conn:
            ids = _lists(conn, lists, "--list")
            if conn.scalar(select(Contact.id).where(Contact.email == address)) is not None:
                raise exists
            now = time.time()
            contact_id = conn.execute(
                insert(Contact)
                .values(
                    email=address,
                    name=name,
                    fields=fields,
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
                .returning(Contact.id)
            ).scalar_one()
            for list_id in ids:
                add_members(conn, list_id, [contact_id])
    except IntegrityError:  # added meanwhile by another process
        raise exists from None
    return int(contact_id)


def get_contact(engine: Engine, email: str) -> ContactDetail:
    with engine.connect() as conn:
        return _detail(conn, _find(conn, email).id)


def update_contact(
    engine: Engine,
    email: str,
    *,
    name: str | None = None,
    set_fields: dict[str, str] | None = None,
    unset_fields: Sequence[str] = (),
    add_lists: Sequence[str] = (),
    remove_lists: Sequence[str] = (),
) -> ContactDetail:
    """Change the name, fields and lists of a contact; never its status. `name=""` clears
    the name. Fields not named keep their values."""
    name = _name(name)
    set_fields = check_fields(set_fields or {})
    unset = list(
        dict.fromkeys(
            validation.label(key, "an --unset key", error=ContactInputError) for key in unset_fields
        )
    )
    _check_changes(name, set_fields, unset, add_lists, remove_lists)
    with engine.begin() as conn:
        row = _find(conn, email, lock=True)
        adding = _lists(conn, add_lists, "--add-list")
        removing = _lists(conn, remove_lists, "--remove-list")
        fields = dict(row.fields or {})
        # A key as typed, else as the import would have written it.
        unset = [key if key in fields else key.lower() for key in unset]
        missing = [key for key in unset if key not in fields]
        if missing:
            raise ContactInputError(
                f"--unset: {row.email} has no field {', '.join(repr(k) for k in missing)}"
            )
        for key in unset:
            del fields[key]
        fields.update(set_fields)
        values: dict[str, Any] = {"fields": fields, "updated_at": time.time()}
        if name is not None:
            values["name"] = name or None
        conn.execute(update(Contact).where(Contact.id == row.id).values(**values))
        for list_id in adding:
            add_members(conn, list_id, [row.id])
        for list_id in removing:
            remove_members(conn, list_id, [row.id])
        return _detail(conn, row.id)


def _check_changes(
    name: str | None,
    set_fields: dict[str, str],
    unset: list[str],
    add_lists: Sequence[str],
    remove_lists: Sequence[str],
) -> None:
    if name is None and not (set_fields or unset or add_lists or remove_lists):
        raise ContactInputError(
            "nothing to change: give --name, --field, --unset, --add-list or --remove-list"
        )
    both = [key for key in unset if key.lower() in set_fields]
    if both:
        raise ContactInputError(f"--field and --unset both name {', '.join(map(repr, both))}")
    both = [n for n in dict.fromkeys(add_lists) if n in remove_lists]
    if both:
        raise ContactInputError(
            f"--add-list and --remove-list both name {', '.join(map(repr, both))}"
        )


def delete_contact(engine: Engine, email: str) -> ContactSummary:
    """Delete a contact with its sub-tasks and list memberships; the contact as it was.

    A task being made or started meanwhile is waited for: it may be adding a sub-task for
    this contact. Its sub-tasks are locked, so a worker cannot take one between the check
    and the delete; one a worker already holds refuses the delete until it is settled.
    They are locked before the contact, in id order, as applying an event locks them.
    """
    with engine.begin() as conn:
        hold_expansion_lock(conn, exclusive=True)
        contact_id = _find(conn, email).id
        held = conn.execute(
            select(SubTask.id, SubTask.task_id, SubTask.status)
            .where(SubTask.contact_id == contact_id)
            .order_by(SubTask.id)
            .with_for_update()
        ).all()
        row = _find(conn, email, lock=True)
        busy = sorted({task_id for _, task_id, status in held if status in IN_FLIGHT})
        if busy:
            raise ContactBusy(
                f"{row.email} is being sent right now (task {', '.join(map(str, busy))}):"
                " try again in a few seconds"
            )
        with keeping_funnels(conn, [sub_task_id for sub_task_id, _, _ in held]):
            conn.execute(delete(SubTask).where(SubTask.contact_id == row.id))
        conn.execute(delete(Contact).where(Contact.id == row.id))
    return _summary(row)


# -- many contacts ---------------------------------------------------------------------------


def _chosen(
    conn: Connection, list_name: str | None, status: str | None
) -> list[ColumnElement[bool]]:
    """The conditions for the contacts of a list and of a status."""
    where: list[ColumnElement[bool]] = []
    if list_name is not None:
        (list_id,) = _lists(conn, [list_name], "--list")
        where.append(
            Contact.id.in_(select(ListMember.contact_id).where(ListMember.list_id == list_id))
        )
    if status is not None:
        where.append(Contact.status == status)
    return where


def list_contacts(
    engine: Engine,
    *,
    list_name: str | None = None,
    status: str | None = None,
    search: str | None = None,
    limit: int = 50,
    after_id: int = 0,
) -> list[ContactSummary]:
    """A page of contacts by id, from after `after_id`: a cursor that neither skips nor
    repeats a contact however many are added meanwhile, as an offset would."""
    limit = validation.whole_number(limit, "--limit", 1, MAX_LIMIT, error=ContactInputError)
    after_id = validation.whole_number(
        after_id, "--after", 0, validation.ID_MAX, error=ContactInputError
    )
    status = _status(status)
    with engine.connect() as conn:
        where = _chosen(conn, list_name, status)
        if search:
            pattern = (
                "%"
                + _escape_like(validation.db_text(search, "--search", error=ContactInputError))
                + "%"
            )
            where.append(
                or_(
                    Contact.email.ilike(pattern, escape="\\"),
                    Contact.name.ilike(pattern, escape="\\"),
                )
            )
        rows = conn.execute(
            select(
                Contact.id,
                Contact.email,
                Contact.name,
                Contact.status,
                Contact.status_reason,
                Contact.created_at,
                Contact.updated_at,
            )
            .where(Contact.id > after_id, *where)
            .order_by(Contact.id)
            .limit(limit)
        ).all()
    return [_summary(row) for row in rows]


def _summary(row: Row[Any]) -> ContactSummary:
    return ContactSummary(
        row.id,
        row.email,
        row.name,
        row.status,
        row.status_reason,
        row.created_at,
        row.updated_at,
    )


def export_contacts(
    engine: Engine, out: TextIO, *, list_name: str | None = None, status: str | None = None
) -> int:
    """Write the contacts as CSV that `edm contacts import` reads back; the rows written.

    Columns: email, name, status, then every field key of the exported contacts, sorted;
    a contact without one of them has an empty cell there. Read in one snapshot, a batch
    at a time. On SQLite every transaction holds the write lock, so the CSV is spooled to
    a temporary file and copied out after the commit: a slow reader (a pager, a network)
    must not hold up the workers.
    """
    status = _status(status)
    if engine.dialect.name != "sqlite":
        return _export(engine, out, list_name, status)
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as spool:
        count = _export(engine, spool, list_name, status)
        spool.seek(0)
        shutil.copyfileobj(spool, out)
    return count


def _export(engine: Engine, out: TextIO, list_name: str | None, status: str | None) -> int:
    with _snapshot(engine) as conn:
        where = _chosen(conn, list_name, status)
        keys = _field_keys(conn, where)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*KNOWN_COLUMNS, *keys])
        rows = conn.execution_options(yield_per=EXPORT_BATCH).execute(
            select(Contact.email, Contact.name, Contact.status, Contact.fields)
            .where(*where)
            .order_by(Contact.id)
        )
        count = 0
        for row in rows:
            fields = row.fields or {}
            writer.writerow(
                [row.email, row.name or "", row.status, *(fields.get(k, "") for k in keys)]
            )
            count += 1
    return count


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read-only transaction that sees one state throughout: the header's keys and the
    rows after it agree even while an import runs."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def _field_keys(conn: Connection, where: list[ColumnElement[bool]]) -> list[str]:
    """Every field key of the chosen contacts, sorted, found by the database."""
    if conn.dialect.name == "postgresql":
        query = select(func.json_object_keys(Contact.fields)).where(
            func.json_typeof(Contact.fields) == "object", *where
        )
    else:
        each = func.json_each(Contact.fields).table_valued("key")
        query = (
            select(each.c.key)
            .select_from(Contact)
            .join(each, true())
            .where(func.json_type(Contact.fields) == "object", *where)
        )
    keys = sorted(set(conn.scalars(query.distinct())))
    _check_columns(keys)
    return keys


def _check_columns(keys: list[str]) -> None:
    """Refuse keys the import would read back as another column, or as none: the file
    would not import, or would import wrong. Only contacts stored unchecked have them."""
    taken = {column: f"the contact's own {column}" for column in KNOWN_COLUMNS}
    for key in keys:
        column = key.strip().lower()
        clash = taken.get(column, "no column at all" if not column else None)
        if clash is not None:
            raise ContactInputError(
                f"the field {cut(key)!r} would be imported back as {clash}: `edm contacts"
                f" update EMAIL --unset {cut(key)!r}` on the contacts that have it first"
            )
        taken[column] = f"the field {cut(key)!r}"
