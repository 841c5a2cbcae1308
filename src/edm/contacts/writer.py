"""Applying contact rows to the database, in the caller's transaction.

Rows are applied in the order given: a row whose address an earlier row of the same
import already named is a duplicate, and merges onto what that row left, by the same
rules as onto an existing contact.

The rows are staged first (`store.stager`), then merged: the addresses named once in a
few set-based statements, those named more than once (rare) in Python, address by
address, with `merge` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from edm.contacts import store
from edm.contacts.merge import ContactState, MergeRules, StatusEffect, merge
from edm.contacts.rows import ContactRow
from edm.db.models import CONTACT_STATUSES


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
    """Stages rows (`staging()`), then merges them into the contacts (`finish()`)."""

    def __init__(self, conn: Connection, rules: MergeRules, list_id: int | None = None) -> None:
        self.conn = conn
        self.rules = rules
        self.list_id = list_id  # every contact written is put on this list
        self.counts = Counts()

    @contextmanager
    def staging(self) -> Iterator[Callable[[ContactRow], None]]:
        """A function that stages one good row; call it in file order."""
        store.start_staging(self.conn)
        with store.stager(self.conn) as add:
            yield add

    def finish(self) -> Counts:
        """Merge the staged rows; the counts of what they did."""
        store.split_repeated(self.conn)
        self._merge_once()
        for rows in store.repeated_batches(self.conn):
            self._merge_in_order(rows)
        if self.list_id is not None:
            store.put_staged_on_list(self.conn, self.list_id)
        store.end_staging(self.conn)
        return self.counts

    def _merge_once(self) -> None:
        for attempt in (1, 2):
            try:
                with self.conn.begin_nested():
                    once = store.merge_once(self.conn, self.rules)
                break
            except IntegrityError:
                # Another transaction added one of these addresses since the lock (two
                # imports at once on PostgreSQL): merge again, onto its contact.
                if attempt == 2:
                    raise
        for name, value in vars(once).items():
            setattr(self.counts, name, getattr(self.counts, name) + value)

    def _merge_in_order(self, rows: list[ContactRow]) -> None:
        """Whole addresses, each with all its rows in file order."""
        emails = sorted({row.email for row in rows})
        for attempt in (1, 2):
            current = store.lock_contacts(self.conn, emails)
            plan = plan_chunk(rows, current, set(), self.rules)
            try:
                with self.conn.begin_nested():
                    store.insert_contacts(self.conn, plan.inserts)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        store.update_contacts(self.conn, plan.updates)
        self.counts.add(plan.counts)


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
        with writer.staging() as stage:
            for row in rows:
                stage(row)
        writer.finish()
    return len(rows)
