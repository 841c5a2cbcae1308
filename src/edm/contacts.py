"""Importing contacts from CSV: good rows are kept even when some rows are bad."""

from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edm.db.models import CONTACT_STATUSES, Contact

EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
CHUNK = 1000


class ImportError_(ValueError):
    """The file as a whole cannot be imported (unreadable, no `email` column)."""


@dataclass
class ImportReport:
    imported: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def import_csv(engine: Engine, path: Path) -> ImportReport:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ImportError_(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise ImportError_(f"{path} is empty: a header row with an `email` column is needed")
        headers = [h.strip().lower() for h in reader.fieldnames]
        if "email" not in headers:
            raise ImportError_(f"{path} has no `email` column (columns: {', '.join(headers)})")
        reader.fieldnames = headers
        report = ImportReport()
        batch: dict[str, dict] = {}
        try:
            for row in reader:
                line = reader.line_num
                contact = _contact(row, line, report)
                if contact:
                    batch[contact["email"]] = contact
                if len(batch) >= CHUNK:
                    report.imported += _upsert(engine, list(batch.values()))
                    batch.clear()
        except csv.Error as exc:
            report.bad_rows.append((reader.line_num, f"unreadable CSV: {exc}"))
        if batch:
            report.imported += _upsert(engine, list(batch.values()))
    return report


def _contact(row: dict, line: int, report: ImportReport) -> dict | None:
    if None in row:
        report.bad_rows.append((line, "more fields than the header has columns"))
        return None
    if any(value is None for value in row.values()):
        report.bad_rows.append((line, "fewer fields than the header has columns"))
        return None
    email = (row.pop("email") or "").strip().lower()
    if not EMAIL.match(email):
        report.bad_rows.append((line, f"not an email address: {email!r}"))
        return None
    status = (row.pop("status", "") or "active").strip().lower()
    if status not in CONTACT_STATUSES:
        report.bad_rows.append((line, f"unknown status {status!r}"))
        return None
    name = (row.pop("name", "") or "").strip() or None
    now = time.time()
    return {
        "email": email,
        "name": name,
        "status": status,
        "fields": {k: v for k, v in row.items() if k},
        "created_at": now,
        "updated_at": now,
    }


def _upsert(engine: Engine, rows: list[dict]) -> int:
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(Contact).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[Contact.email],
        set_={
            "name": statement.excluded.name,
            "fields": statement.excluded.fields,
            "updated_at": statement.excluded.updated_at,
        },
    )
    with engine.begin() as conn:
        conn.execute(statement)
    return len(rows)


def add_contacts(engine: Engine, contacts: list[dict]) -> int:
    """Insert generated contacts (the demo and benchmarks); same rules as an import."""
    now = time.time()
    rows = [
        {
            "email": c["email"].lower(),
            "name": c.get("name"),
            "status": c.get("status", "active"),
            "fields": c.get("fields", {}),
            "created_at": now,
            "updated_at": now,
        }
        for c in contacts
    ]
    for start in range(0, len(rows), CHUNK):
        _upsert(engine, rows[start : start + CHUNK])
    return len(rows)
