"""The merge rules: what one row does to the contact it names. Pure: no database.

1. A column absent from the file changes nothing.
2. An empty cell changes nothing (unless `overwrite_empty`); a field the contact lacks
   is still added, as "", so every contact of the file can be sent a template that uses
   the file's columns.
3. Custom fields merge key by key: a file with `email,city` changes only `city`.
4. A `status` may suppress an active contact (`status_reason` "import: <status>"), never
   reactivate a suppressed one, nor change why it is suppressed: the reason it already
   has (a hard bounce, a complaint) is worth more than a file's word. `allow_reactivate`
   lets the file's status win over a suppressed contact's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from edm.contacts.rows import ContactRow

ACTIVE = "active"
REASON_PREFIX = "import: "


@dataclass(frozen=True)
class MergeRules:
    overwrite_empty: bool = False
    allow_reactivate: bool = False


@dataclass(frozen=True, slots=True)
class ContactState:
    """A contact as stored; `id` is None until it is inserted."""

    email: str
    name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    status: str = ACTIVE
    status_reason: str | None = None
    id: int | None = None


class StatusEffect(StrEnum):
    NONE = "none"
    SUPPRESSED = "suppressed"  # active (or new) and now suppressed
    REACTIVATED = "reactivated"  # suppressed and now active (allow_reactivate)
    KEPT_SUPPRESSED = "kept_suppressed"  # the row said active; the contact stays suppressed


def merge(
    current: ContactState | None, row: ContactRow, rules: MergeRules
) -> tuple[ContactState, StatusEffect]:
    """The contact after `row`, and what happened to its status."""
    before = current or ContactState(email=row.email)
    name = before.name
    if row.name is not None and (row.name or rules.overwrite_empty):
        name = row.name or None
    fields = dict(before.fields)
    for key, value in (row.fields or {}).items():
        if value != "" or rules.overwrite_empty or key not in fields:
            fields[key] = value
    status, reason, effect = _status(before, row.status, rules)
    return replace(before, name=name, fields=fields, status=status, status_reason=reason), effect


def _status(
    before: ContactState, wanted: str | None, rules: MergeRules
) -> tuple[str, str | None, StatusEffect]:
    unchanged = (before.status, before.status_reason, StatusEffect.NONE)
    if wanted is None or wanted == before.status:
        return unchanged
    if before.status == ACTIVE:
        return wanted, REASON_PREFIX + wanted, StatusEffect.SUPPRESSED
    if not rules.allow_reactivate:
        return (*unchanged[:2], StatusEffect.KEPT_SUPPRESSED) if wanted == ACTIVE else unchanged
    if wanted == ACTIVE:
        return ACTIVE, None, StatusEffect.REACTIVATED
    return wanted, REASON_PREFIX + wanted, StatusEffect.NONE
