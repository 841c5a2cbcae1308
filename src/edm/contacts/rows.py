"""One CSV record to one contact row, or the reason it is rejected.

A rejection is its row's alone: the rows around it are imported. Values are stripped,
so a cell of spaces is an empty cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from edm.contacts.addresses import InvalidAddress, normalise_email
from edm.contacts.csvfile import MAX_LINE_BYTES, Record
from edm.contacts.shown import cut
from edm.db.models import CONTACT_STATUSES, Contact

# A field is a merge value (a city, a coupon code); a larger one is a mistake in the file,
# and every contact's fields are read for every message sent to it.
MAX_FIELD_CHARS = 10_000
NAME_CHARS = Contact.__table__.c.name.type.length
# The name goes into the To: header: a line break there would break the message. These
# are the characters of Unicode categories Cc, Cs, Zl and Zp (`tests/test_rows.py` checks
# it against unicodedata): one regular expression instead of a lookup per character.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class ContactRow(NamedTuple):
    """What one row says about one contact (a tuple: an import makes a million).

    `name` is None when the file has no `name` column, "" for an empty cell; `status` is
    None when there is no `status` column or its cell is empty. `fields` holds every other
    column, empty cells as "".
    """

    line: int
    email: str
    name: str | None = None
    status: str | None = None
    fields: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    reason: str
    value: str = ""  # the offending value, already cut short


@dataclass(frozen=True)
class Layout:
    """Where the columns the import knows are; every other column is a custom field."""

    columns: tuple[str, ...]
    email: int
    name: int | None
    status: int | None
    fields: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, columns: list[str]) -> Layout:
        known = {"email", "name", "status"}
        return cls(
            columns=tuple(columns),
            email=columns.index("email"),
            name=columns.index("name") if "name" in columns else None,
            status=columns.index("status") if "status" in columns else None,
            fields=tuple((i, c) for i, c in enumerate(columns) if c not in known),
        )


def parse_row(record: Record, layout: Layout) -> ContactRow | Rejection:
    """The checks in the order a user fixes a row: its shape, its sizes, then its values."""
    line, cells = record.line, record.cells
    if record.overlong:
        return Rejection(line, f"a line over {MAX_LINE_BYTES:,} bytes long")
    width = len(layout.columns)
    if len(cells) != width:
        more = "more" if len(cells) > width else "fewer"
        return Rejection(
            line, f"{more} fields than the header has columns ({len(cells)}, not {width})"
        )
    cells = list(map(str.strip, cells))
    if max(map(len, cells)) > MAX_FIELD_CHARS:
        index, cell = next((i, c) for i, c in enumerate(cells) if len(c) > MAX_FIELD_CHARS)
        return Rejection(
            line,
            f"`{cut(layout.columns[index])}` is {len(cell):,} characters long"
            f" (at most {MAX_FIELD_CHARS:,})",
            cut(cell),
        )
    address = cells[layout.email]
    if not address:
        return Rejection(line, "no email address")
    try:
        email = normalise_email(address)
    except InvalidAddress as exc:
        return Rejection(line, f"not an email address: {cut(str(exc), 120)}", cut(address))
    status = None
    if layout.status is not None and cells[layout.status]:
        status = cells[layout.status].lower()
        if status not in CONTACT_STATUSES:
            return Rejection(
                line, f"unknown status (one of: {', '.join(CONTACT_STATUSES)})", cut(status)
            )
    name = None if layout.name is None else cells[layout.name]
    if name and len(name) > NAME_CHARS:
        return Rejection(line, f"a name over {NAME_CHARS} characters", cut(name))
    if name and _NOT_IN_NAMES.search(name):
        return Rejection(line, "a line break or control character in the name", cut(name))
    fields = {key: cells[index] for index, key in layout.fields}
    return ContactRow(line, email, name, status, fields)
