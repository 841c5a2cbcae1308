"""The SQL of writing contacts, for both databases, inside the caller's transaction.

An import stages its good rows in a temporary table (PostgreSQL: COPY; SQLite: batched
inserts), then merges them into `contacts` a few statements at a time: addresses the file
names once are merged in SQL, by the rules of `edm.contacts.merge` written as CASE
expressions; addresses it names more than once (rare) are read back and merged in Python
by `merge` itself, in file order. Contacts are locked before they are read: on PostgreSQL
`FOR UPDATE`, so that a bounce recorded meanwhile is not overwritten by the import;
SQLite's write lock (BEGIN IMMEDIATE) already covers the whole database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Text,
    any_,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from edm.contacts.merge import ACTIVE, REASON_PREFIX, ContactState, MergeRules
from edm.contacts.rows import ContactRow
from edm.db.models import Contact

CONTACTS = Contact.__table__
# Rows per batch on SQLite (one executemany), and addresses per round trip of the Python
# merge: large enough that round trips cost little next to the rows, small enough that a
# batch's addresses fit one `IN (...)` on either database.
BATCH = 1000

# -- staging --------------------------------------------------------------------------------
# The good rows of the file with their line, dropped with the transaction (or at the end).
# `fields` is the JSON text `contacts.fields` gets for a new contact, as SQLAlchemy writes it.
ROWS = "edm_import_rows"
AGAIN = "edm_import_again"  # the rows of addresses the file names more than once
STAGE_CREATE = {
    "postgresql": f"""CREATE TEMPORARY TABLE {ROWS} (line bigint NOT NULL, email text NOT NULL,
        name text, status text, fields json NOT NULL) ON COMMIT DROP""",
    "sqlite": f"""CREATE TEMPORARY TABLE {ROWS} (line INTEGER NOT NULL, email TEXT NOT NULL,
        name TEXT, status TEXT, fields TEXT NOT NULL)""",
}
STAGE_DROP = {
    "postgresql": [f"DROP TABLE IF EXISTS pg_temp.{ROWS}", f"DROP TABLE IF EXISTS pg_temp.{AGAIN}"],
    "sqlite": [f"DROP TABLE IF EXISTS temp.{ROWS}", f"DROP TABLE IF EXISTS temp.{AGAIN}"],
}
STAGE_COPY = f"COPY {ROWS} (line, email, name, status, fields) FROM STDIN"
STAGE_INSERT = f"INSERT INTO {ROWS} (line, email, name, status, fields) VALUES (?, ?, ?, ?, ?)"

# The addresses met more than once, with all their rows, set apart: they are merged in
# Python, row after row. A temporary table has no statistics until it is analysed, and the
# planner would guess at the joins of a million rows.
SPLIT = {
    "postgresql": [
        f"ANALYZE {ROWS}",
        f"""CREATE TEMPORARY TABLE {AGAIN} ON COMMIT DROP AS
        SELECT * FROM {ROWS} WHERE email IN (
            SELECT email FROM {ROWS} GROUP BY email HAVING count(*) > 1)""",
        f"CREATE INDEX ON {AGAIN} (email, line)",
        f"ANALYZE {AGAIN}",
    ],
    "sqlite": [
        f"""CREATE TEMPORARY TABLE {AGAIN} AS
        SELECT * FROM {ROWS} WHERE email IN (
            SELECT email FROM {ROWS} GROUP BY email HAVING count(*) > 1)""",
        f"CREATE INDEX temp.ix_{AGAIN} ON {AGAIN} (email, line)",
    ],
}
_ONCE = f"NOT EXISTS (SELECT 1 FROM {AGAIN} a WHERE a.email = s.email)"

# -- addresses met once: the merge rules as SQL ----------------------------------------------
# Locks the existing contacts the file names, in one order (two imports queue, not
# deadlock); the statements after it then read them as they stay until the commit.
LOCK_NAMED = {
    "postgresql": f"""
        SELECT count(*) FROM (SELECT c.id FROM contacts c
            WHERE c.email IN (SELECT email FROM {ROWS}) ORDER BY c.email FOR UPDATE OF c) AS l""",
    "sqlite": "SELECT 0",
}

# What a row does to the status of the contact it names (`merge._status`), and the effect
# counted; `:reactivate` is `allow_reactivate`.
_KEEPS_STATUS = "(s.status IS NULL OR s.status = c.status)"
_STATUS = f"""CASE WHEN {_KEEPS_STATUS} THEN c.status
        WHEN c.status = '{ACTIVE}' OR :reactivate THEN s.status ELSE c.status END"""
_REASON = f"""CASE WHEN {_KEEPS_STATUS} THEN c.status_reason
        WHEN c.status = '{ACTIVE}' THEN '{REASON_PREFIX}' || s.status
        WHEN NOT :reactivate THEN c.status_reason
        WHEN s.status = '{ACTIVE}' THEN NULL
        ELSE '{REASON_PREFIX}' || s.status END"""
_EFFECT = f"""CASE WHEN {_KEEPS_STATUS} THEN 'none'
        WHEN c.status = '{ACTIVE}' THEN 'suppressed'
        WHEN s.status <> '{ACTIVE}' THEN 'none'
        WHEN :reactivate THEN 'reactivated' ELSE 'kept_suppressed' END"""
# A name cell: absent (NULL) keeps the name; empty keeps it unless `:overwrite`.
_NAME = """CASE WHEN s.name IS NULL THEN c.name WHEN s.name <> '' THEN s.name
        WHEN :overwrite THEN NULL ELSE c.name END"""
# The row's fields that change something: a value, or an empty one when `:overwrite` or
# when the contact lacks the key. On PostgreSQL in jsonb, the contact's fields converted
# once per row (`OFFSET 0` keeps the planner from copying the conversion into each use):
# the merged fields are stored in jsonb's key order. Fields stored as the very text the
# row has (the same file again) change nothing, and are not read key by key: that took
# two thirds of importing a million existing contacts. On SQLite json_patch keeps the
# contact's order and appends new keys; a change is a patched key the contact lacks or
# holds with another value or type.
MERGED = "edm_import_merged"
_TEMP = {"postgresql": "pg_temp", "sqlite": "temp"}
_MERGE = {
    "postgresql": f"""
        SELECT id, email,
               CASE WHEN changed THEN coalesce(CAST(after AS json), old_fields) END AS fields,
               name, status, status_reason, effect, changed
        FROM (SELECT *, (NOT same AND after <> before) OR name IS DISTINCT FROM old_name
                        OR status <> old_status
                        OR status_reason IS DISTINCT FROM old_reason AS changed
              FROM (SELECT c.id, c.email, c.name AS old_name, c.status AS old_status,
                           c.status_reason AS old_reason, c.fields AS old_fields, b.same,
                           f.before, f.after,
                           {_NAME} AS name, {_STATUS} AS status, {_REASON} AS status_reason,
                           {_EFFECT} AS effect
                    FROM {ROWS} s JOIN contacts c ON c.email = s.email
                    CROSS JOIN LATERAL (
                        SELECT same, CASE WHEN NOT same THEN CAST(c.fields AS jsonb) END AS before
                        FROM (SELECT CAST(c.fields AS text) = CAST(s.fields AS text) AS same) AS t
                        OFFSET 0) AS b
                    LEFT JOIN LATERAL (
                        SELECT b.before, b.before || coalesce(
                            (SELECT jsonb_object_agg(p.key, p.value) FROM json_each(s.fields) AS p
                             WHERE CAST(p.value AS text) <> '""' OR :overwrite
                                OR NOT jsonb_exists(b.before, p.key)), '{{}}') AS after
                        WHERE NOT b.same
                        OFFSET 0) AS f ON true
                    WHERE {_ONCE} OFFSET 0) AS merged
              OFFSET 0) AS compared""",
    "sqlite": f"""
        SELECT m.id, c.email, json_patch(c.fields, m.patch) AS fields, m.name, m.status,
               m.status_reason, m.effect,
               m.name IS NOT c.name OR m.status <> c.status
               OR m.status_reason IS NOT c.status_reason
               OR EXISTS (SELECT 1 FROM json_each(m.patch) AS p WHERE NOT EXISTS (
                   SELECT 1 FROM json_each(c.fields) AS e
                   WHERE e.key = p.key AND e.type = p.type AND e.value = p.value)) AS changed
        FROM (SELECT c.id, {_NAME} AS name, {_STATUS} AS status, {_REASON} AS status_reason,
                     {_EFFECT} AS effect,
                     (SELECT json_group_object(p.key, p.value) FROM json_each(s.fields) AS p
                      WHERE p.value <> '' OR :overwrite
                         OR NOT EXISTS (SELECT 1 FROM json_each(c.fields) AS e
                                        WHERE e.key = p.key)) AS patch
              FROM {ROWS} s JOIN contacts c ON c.email = s.email WHERE {_ONCE}) AS m
        JOIN contacts c ON c.id = m.id""",
}
# Every existing contact named once, as the row leaves it. One table for both databases
# (SQLite has no UPDATE in a WITH), read by the counts, the update and the insert after.
MERGE_EXISTING = {
    "postgresql": [
        f"DROP TABLE IF EXISTS pg_temp.{MERGED}",
        f"CREATE TEMPORARY TABLE {MERGED} ON COMMIT DROP AS {_MERGE['postgresql']}",
        f"ANALYZE {MERGED}",
    ],
    "sqlite": [
        f"DROP TABLE IF EXISTS temp.{MERGED}",
        f"CREATE TEMPORARY TABLE {MERGED} AS {_MERGE['sqlite']}",
        f"CREATE INDEX temp.ix_{MERGED} ON {MERGED} (email)",
    ],
}
MERGED_COUNTS = f"""
    SELECT sum(CASE WHEN changed THEN 1 ELSE 0 END) AS updated,
           sum(CASE WHEN changed THEN 0 ELSE 1 END) AS unchanged,
           sum(CASE WHEN effect = 'suppressed' THEN 1 ELSE 0 END) AS suppressed,
           sum(CASE WHEN effect = 'reactivated' THEN 1 ELSE 0 END) AS reactivated,
           sum(CASE WHEN effect = 'kept_suppressed' THEN 1 ELSE 0 END) AS kept_suppressed
    FROM {MERGED}"""
UPDATE_MERGED = f"""
    UPDATE contacts SET name = m.name, fields = m.fields, status = m.status,
           status_reason = m.status_reason, updated_at = :now
    FROM {MERGED} m WHERE contacts.id = m.id AND m.changed"""

# New addresses met once (those the merge above did not find): the row as it stands,
# counted as it is inserted. A plain INSERT, no ON CONFLICT: a contact another
# transaction added since is an IntegrityError, and the merge is done again. (SQLite has
# no INSERT in a WITH, and nothing else writes while it imports: the rows are counted
# just before.)
_NEW = f"""
    INSERT INTO contacts (email, name, fields, status, status_reason, created_at, updated_at)
    SELECT s.email, CASE WHEN s.name <> '' THEN s.name END, s.fields,
           coalesce(s.status, '{ACTIVE}'),
           CASE WHEN s.status <> '{ACTIVE}' THEN '{REASON_PREFIX}' || s.status END, :now, :now
    FROM {ROWS} s
    WHERE {_ONCE} AND NOT EXISTS (SELECT 1 FROM {MERGED} m WHERE m.email = s.email)"""
_NEW_COUNTS = f"""count(*) AS new,
           sum(CASE WHEN status <> '{ACTIVE}' THEN 1 ELSE 0 END) AS suppressed"""
INSERT_NEW = {
    "postgresql": [f"WITH n AS ({_NEW} RETURNING status) SELECT {_NEW_COUNTS} FROM n"],
    "sqlite": [
        f"""SELECT {_NEW_COUNTS} FROM {ROWS} s
        WHERE {_ONCE} AND NOT EXISTS (SELECT 1 FROM {MERGED} m WHERE m.email = s.email)""",
        _NEW,
    ],
}

# -- addresses met more than once: read back a batch of whole addresses at a time ------------
AGAIN_BATCH = f"""
    SELECT line, email, name, status, fields FROM {AGAIN}
    WHERE email IN (SELECT DISTINCT email FROM {AGAIN} WHERE email > :after
                    ORDER BY email LIMIT :limit)
    ORDER BY email, line"""

# Every contact a good row named goes on the list (those on it already stay).
PUT_ON_LIST = f"""
    INSERT INTO list_members (list_id, contact_id, added_at)
    SELECT :list_id, c.id, :now FROM contacts c WHERE c.email IN (SELECT email FROM {ROWS})
    ON CONFLICT (list_id, contact_id) DO NOTHING"""


@dataclass
class OnceCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed: int = 0
    reactivated: int = 0
    kept_suppressed: int = 0


def start_staging(conn: Connection) -> None:
    dialect = conn.dialect.name
    for sql in STAGE_DROP[dialect]:
        conn.exec_driver_sql(sql)
    conn.exec_driver_sql(STAGE_CREATE[dialect])


def end_staging(conn: Connection) -> None:
    for sql in STAGE_DROP[conn.dialect.name]:
        conn.exec_driver_sql(sql)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_TEMP[conn.dialect.name]}.{MERGED}")


def staged_values(row: ContactRow) -> tuple:
    """A row as the staging table holds it; its fields as the JSON text SQLAlchemy writes."""
    return (row.line, row.email, row.name, row.status, fields_json(row.fields))


def fields_json(fields: dict[str, Any] | None) -> str:
    """`json.dumps(fields)`, three times as fast for a CSV row's fields (strings only):
    json.dumps builds an encoder per call, a second of a million rows' import."""
    if not fields:
        return "{}"
    try:
        pairs = [f"{_json_string(key)}: {_json_string(value)}" for key, value in fields.items()]
    except TypeError:  # a value that is not a string (contacts made by code, not a file)
        return json.dumps(fields)
    return "{" + ", ".join(pairs) + "}"


@contextmanager
def stager(conn: Connection) -> Iterator[Callable[[ContactRow], None]]:
    """A function that stages one row; the rows are all in the table when the block ends.

    PostgreSQL: one COPY through the driver (psycopg 3), each row sent as it comes.
    SQLite: an executemany per BATCH rows.
    """
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(STAGE_COPY) as copy:
            yield lambda row: copy.write_row(staged_values(row))
        return
    batch: list[tuple] = []
    cursor = conn.connection.driver_connection.cursor()

    def add(row: ContactRow) -> None:
        batch.append(staged_values(row))
        if len(batch) >= BATCH:
            cursor.executemany(STAGE_INSERT, batch)
            batch.clear()

    try:
        yield add
        if batch:
            cursor.executemany(STAGE_INSERT, batch)
    finally:
        cursor.close()


def split_repeated(conn: Connection) -> None:
    """Set apart the rows of addresses the file names more than once."""
    for sql in SPLIT[conn.dialect.name]:
        conn.exec_driver_sql(sql)


def merge_once(conn: Connection, rules: MergeRules) -> OnceCounts:
    """Merge the rows of addresses the file names once: existing contacts by the rules,
    new ones inserted as the row says."""
    dialect = conn.dialect.name
    flags = {"overwrite": rules.overwrite_empty, "reactivate": rules.allow_reactivate}
    now = time.time()
    conn.execute(text(LOCK_NAMED[dialect]))
    for sql in MERGE_EXISTING[dialect]:
        conn.execute(text(sql), flags)
    counts = OnceCounts()
    merged = conn.execute(text(MERGED_COUNTS)).one()
    for name in ("updated", "unchanged", "suppressed", "reactivated", "kept_suppressed"):
        setattr(counts, name, int(getattr(merged, name) or 0))
    conn.execute(text(UPDATE_MERGED), {"now": now})
    new = insert_new(conn, now)
    counts.new = int(new.new or 0)
    counts.suppressed += int(new.suppressed or 0)
    return counts


def insert_new(conn: Connection, now: float) -> Row:
    """Insert the new addresses met once; their count, and how many are suppressed."""
    first, *rest = INSERT_NEW[conn.dialect.name]
    counts = conn.execute(text(first), {"now": now}).one()
    for sql in rest:
        conn.execute(text(sql), {"now": now})
    return counts


def repeated_batches(conn: Connection, limit: int = BATCH) -> Iterator[list[ContactRow]]:
    """The rows of addresses met more than once, whole addresses at a time, in file order."""
    after = ""
    while True:
        rows = conn.execute(text(AGAIN_BATCH), {"after": after, "limit": limit}).all()
        if not rows:
            return
        yield [ContactRow(r.line, r.email, r.name, r.status, _fields(r.fields)) for r in rows]
        after = rows[-1].email


def _fields(value: object) -> dict:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def put_staged_on_list(conn: Connection, list_id: int) -> None:
    conn.execute(text(PUT_ON_LIST), {"list_id": list_id, "now": time.time()})


# -- the Python merge: reading, locking and writing contacts by address ---------------------
def lock_contacts(conn: Connection, emails: list[str]) -> dict[str, ContactState]:
    """The existing contacts among `emails`, locked until the transaction ends."""
    c = CONTACTS.c
    rows = conn.execute(
        select(c.id, c.email, c.name, c.fields, c.status, c.status_reason)
        .where(_among(c.email, emails, conn.dialect.name))
        .order_by(c.email)  # locks in one order: two imports of one chunk queue, not deadlock
        .with_for_update()
    )
    return {
        row.email: ContactState(
            email=row.email,
            name=row.name,
            fields=dict(row.fields or {}),
            status=row.status,
            status_reason=row.status_reason,
            id=row.id,
        )
        for row in rows
    }


def _among(column: ColumnElement[str], emails: list[str], dialect: str) -> ColumnElement[bool]:
    """`column IN (emails)`; on PostgreSQL `= ANY(array)`: one parameter instead of a
    thousand, which halved the time of the lock (measured on 100,000 contacts)."""
    if dialect == "postgresql":
        return column == any_(bindparam("emails", emails, type_=ARRAY(Text)))
    return column.in_(emails)


def insert_contacts(conn: Connection, contacts: list[ContactState]) -> None:
    now = time.time()
    if contacts:
        conn.execute(
            insert(CONTACTS),
            [
                {
                    "email": s.email,
                    "name": s.name,
                    "fields": s.fields,
                    "status": s.status,
                    "status_reason": s.status_reason,
                    "created_at": now,
                    "updated_at": now,
                }
                for s in contacts
            ],
        )


def update_contacts(conn: Connection, contacts: list[ContactState]) -> None:
    now = time.time()
    if contacts:
        conn.execute(
            update(CONTACTS).where(CONTACTS.c.id == bindparam("contact_id")),
            [
                {
                    "contact_id": s.id,
                    "name": s.name,
                    "fields": s.fields,
                    "status": s.status,
                    "status_reason": s.status_reason,
                    "updated_at": now,
                }
                for s in contacts
            ],
        )
