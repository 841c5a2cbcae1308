"""Applying contact rows to the database, a chunk at a time, in the caller's transaction.

Rows are applied in the order given: a row whose address an earlier row of the same
import already named is a duplicate, and merges onto what that row left, by the same
rules as onto an existing contact.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from edm.contacts import store
from edm.contacts.merge import ContactState, MergeRules, StatusEffect, merge
from edm.contacts.rows import ContactRow
from edm.db.models import CONTACT_STATUSES

# Rows per round trip: large enough that the round trips cost little next to the rows,
# small enough that a chunk's addresses fit one `IN (...)` on either database.
CHUNK = 1000


@dataclass
class Counts:
    """Each row counted once as new, updated, unchanged or duplicated; statuses apart."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicated: int = 0  # named an address an earlier row of the same import named
    suppressed: int = 0
    reactivated: int = 0
    kept_suppressed: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Plan:
    inserts: list[ContactState]
    updates: list[ContactState]
    counts: Counts


def plan_chunk(
    rows: list[ContactRow],
    current: dict[str, ContactState],
    seen: set[str],
    rules: MergeRules,
) -> Plan:
    """What a chunk does, given the contacts it names as they are and the addresses met."""
    counts = Counts()
    states = dict(current)
    met = set(seen)
    for row in rows:
        before = states.get(row.email)
        after, effect = merge(before, row, rules)
        states[row.email] = after
        if row.email in met:
            counts.duplicated += 1
        elif before is None:
            counts.new += 1
        else:
            counts.updated += after != before
            counts.unchanged += after == before
        met.add(row.email)
        if effect is not StatusEffect.NONE:
            setattr(counts, effect.value, getattr(counts, effect.value) + 1)
    inserts = [s for email, s in states.items() if email not in current]
    updates = [s for email, s in states.items() if email in current and s != current[email]]
    return Plan(inserts, updates, counts)


class ContactWriter:
    """Writes chunks of rows; `close()` before the transaction commits."""

    def __init__(self, conn: Connection, rules: MergeRules, list_id: int | None = None) -> None:
        self.conn = conn
        self.rules = rules
        self.list_id = list_id  # every contact written is put on this list
        self.counts = Counts()
        store.start_seen(conn)

    def write(self, rows: list[ContactRow]) -> None:
        emails = sorted({row.email for row in rows})
        seen = set(emails) - store.meet(self.conn, emails)
        for attempt in (1, 2):
            current = store.lock_contacts(self.conn, emails)
            plan = plan_chunk(rows, current, seen, self.rules)
            try:
                with self.conn.begin_nested():
                    store.insert_contacts(self.conn, plan.inserts)
                break
            except IntegrityError:
                # Another transaction added one of these addresses since the lock (two
                # imports at once on PostgreSQL): plan again against its contact.
                if attempt == 2:
                    raise
        store.update_contacts(self.conn, plan.updates)
        self.counts.add(plan.counts)
        if self.list_id is not None:
            store.put_on_list(self.conn, self.list_id, emails)

    def close(self) -> None:
        store.end_seen(self.conn)


def add_contacts(engine: Engine, contacts: list[dict]) -> int:
    """Add generated contacts (demo, benchmarks, tests) by the import's merge rules.

    Addresses are trusted, only lower-cased: checking a million generated addresses
    would slow a benchmark's set-up, and these never come from a user's file.
    """
    rows = []
    for line, contact in enumerate(contacts, 1):
        status = contact.get("status")
        if status is not None and status not in CONTACT_STATUSES:
            raise ValueError(f"unknown contact status {status!r}")
        email = contact["email"].strip().lower()
        rows.append(ContactRow(line, email, contact.get("name"), status, contact.get("fields")))
    with engine.begin() as conn:
        writer = ContactWriter(conn, MergeRules())
        for start in range(0, len(rows), CHUNK):
            writer.write(rows[start : start + CHUNK])
        writer.close()
    return len(rows)
