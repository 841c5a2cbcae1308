"""Who a task sends to: the members of its lists, less those of its exclusion lists,
filtered by its condition; with no list, every contact (as before lists existed).

The audience is one SQL filter over `contacts`, built from SQLAlchemy expressions and
bound parameters (list ids, the condition's literals): a list name or a condition is
data, never SQL. Suppressed contacts match the filter like any other but are never sent
to: expansion makes their sub-tasks `skipped`, and counts show them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, func, select, true

from edm import validation
from edm.audience.condition import Condition, parse, to_text
from edm.audience.lists import ListInputError, list_ids
from edm.db.models import Contact, ListMember

CONTACTS = Contact.__table__
MEMBERS = ListMember.__table__


@dataclass(frozen=True)
class Audience:
    lists: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    where: str | None = None  # a condition (edm.audience.condition)

    @classmethod
    def of(cls, lists: list[str] | None, exclude: list[str] | None, where: str | None) -> Audience:
        """From options as given; the condition checked now, so a typo fails early."""
        where = where.strip() if where else None
        if where:
            where = to_text(parse(where))
        return cls(_names(lists, "--lists"), _names(exclude, "--exclude"), where or None)

    @property
    def condition(self) -> Condition | None:
        return parse(self.where) if self.where else None

    def describe(self) -> str:
        parts = [f"lists {', '.join(self.lists)}" if self.lists else "every contact"]
        if self.exclude:
            parts.append(f"less lists {', '.join(self.exclude)}")
        if self.where:
            parts.append(f"where {self.where}")
        return " ".join(parts)


def _names(names: list[str] | None, option: str) -> tuple[str, ...]:
    """List names as given, checked as text a database can hold (no NUL)."""
    found = [
        validation.db_text(name, option, error=ListInputError).strip()
        for name in names or []
        if name.strip()
    ]
    return tuple(dict.fromkeys(found))


def audience_filter(conn: Connection, audience: Audience) -> ColumnElement[bool]:
    """The audience as a condition on `contacts` rows (suppressed ones included)."""
    clauses: list[ColumnElement[bool]] = []
    if audience.lists:
        ids = list_ids(conn, list(audience.lists), "--lists")
        clauses.append(_member_of(ids))
    if audience.exclude:
        ids = list_ids(conn, list(audience.exclude), "--exclude")
        clauses.append(~_member_of(ids))
    condition = audience.condition
    if condition is not None:
        from edm.audience.condition import to_sql

        clauses.append(to_sql(condition, CONTACTS))
    return and_(true(), *clauses)


def _member_of(list_ids: list[int]) -> ColumnElement[bool]:
    return exists(
        select(MEMBERS.c.contact_id).where(
            MEMBERS.c.contact_id == CONTACTS.c.id, MEMBERS.c.list_id.in_(list_ids)
        )
    )


@dataclass(frozen=True)
class AudienceCount:
    receive: int  # active contacts: each gets the message
    suppressed: int  # in the audience, but bounced, complained, unsubscribed or invalid


def count_audience(engine: Engine, audience: Audience) -> AudienceCount:
    """How many the audience would reach, before a task is created (`edm audience count`)."""
    with engine.connect() as conn:
        return count_audience_in(conn, audience)


def count_audience_in(conn: Connection, audience: Audience) -> AudienceCount:
    active = CONTACTS.c.status == "active"
    row = conn.execute(
        select(func.count().filter(active), func.count().filter(~active))
        .select_from(CONTACTS)
        .where(audience_filter(conn, audience))
    ).one()
    return AudienceCount(int(row[0]), int(row[1]))
