"""Checks a task's templates against its audience before anything is spent.

A template that fails at send time fails each sub-task one by one, and used to cost a
pace slot and a unit of quota for each. So at `task create` the fields the templates
need are counted against the contacts that would receive them, and the templates are
rendered once for a real contact, which also catches sandbox violations and filters
that fail on real data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, and_, exists, func, select

from edm import messages
from edm.db import queries as q
from edm.db.models import Contact

# How many field names an error lists, and how many contacts are looked at to find one
# that has every field a template needs.
KNOWN_FIELDS_SHOWN = 30
SAMPLE_CONTACTS = 200
PREVIEW_UNSUBSCRIBE_URL = "https://unsubscribe.invalid/preview"


class TemplateCheckError(ValueError):
    """The templates cannot be sent to this audience; the message says why."""


@dataclass(frozen=True)
class TaskContent:
    subject: str
    html: str | None
    text: str | None

    def parts(self) -> list[tuple[str, str | None, bool]]:
        """(name, source, is_html) of each template."""
        return [
            ("subject", self.subject, False),
            ("html", self.html, True),
            ("text", self.text, False),
        ]


def check_sizes(content: TaskContent, max_bytes: int) -> None:
    for name, source, _ in content.parts():
        if source is not None and len(source.encode("utf-8", "surrogatepass")) > max_bytes:
            size = len(source.encode("utf-8", "surrogatepass"))
            raise TemplateCheckError(
                f"the {name} template is {size:,} bytes; at most {max_bytes:,} are allowed "
                "(EDM_MAX_TEMPLATE_BYTES)"
            )


def check_syntax(content: TaskContent) -> None:
    try:
        for name, source, is_html in content.parts():
            messages.validate(name, source, html=is_html)
    except messages.TemplateError as exc:
        raise TemplateCheckError(str(exc)) from None


def required_fields(content: TaskContent) -> set[str]:
    fields: set[str] = set()
    for _, source, is_html in content.parts():
        fields |= messages.required_fields(source, html=is_html)
    return fields


def check_against_audience(
    conn: Connection,
    content: TaskContent,
    task_id: int,
    audience: ColumnElement[bool],
    *,
    allow_missing_fields: bool = False,
) -> None:
    """Refuse templates that need fields the audience lacks, or that fail for a real
    contact. `audience` is the task's audience as a condition on contacts (the one its
    sub-tasks were made from); its active contacts are those of its pending sub-tasks."""
    dialect = conn.dialect.name
    needed = sorted(required_fields(content))
    receiving = and_(Contact.__table__.c.status == "active", audience)
    lacking = {field: _count_lacking(conn, dialect, field, receiving) for field in needed}
    missing = {field: n for field, n in lacking.items() if n}
    if missing and not allow_missing_fields:
        known = [
            row[0]
            for row in conn.execute(
                q.query(q.AUDIENCE_FIELD_NAMES, dialect),
                {"limit": KNOWN_FIELDS_SHOWN, "task_id": task_id},
            )
        ]
        what = "; ".join(
            f"{n:,} contact{'s lack' if n != 1 else ' lacks'} field `{field}`"
            for field, n in missing.items()
        )
        raise TemplateCheckError(
            f"{what} (known fields: {', '.join(known) or 'none'}; standard fields: "
            f"{', '.join(sorted(messages.STANDARD_FIELDS))}). Give the template a default, "
            '`{{ field | default("") }}`, or pass --allow-missing-fields'
        )
    contact = _sample_contact(conn, dialect, needed, task_id)
    if contact is not None:
        _render_once(content, contact, needed)


def _count_lacking(
    conn: Connection, dialect: str, field: str, receiving: ColumnElement[bool]
) -> int:
    lacking = and_(receiving, q.lacking_field(dialect, field))
    if not conn.execute(select(exists().where(lacking))).scalar_one():
        return 0
    contacts = Contact.__table__
    return int(conn.execute(select(func.count()).select_from(contacts).where(lacking)).scalar_one())


def _sample_contact(conn: Connection, dialect: str, needed: list[str], task_id: int) -> dict | None:
    """The first audience contact that has every needed field (else the first one)."""
    result = conn.execute(
        q.query(q.AUDIENCE_SAMPLE, dialect), {"limit": SAMPLE_CONTACTS, "task_id": task_id}
    )
    rows = [dict(row._mapping) for row in result]
    for row in rows:
        if isinstance(row["fields"], str):
            row["fields"] = json.loads(row["fields"])
    complete = [row for row in rows if all(field in (row["fields"] or {}) for field in needed)]
    return (complete or rows or [None])[0]


def _render_once(content: TaskContent, contact: dict, needed: list[str]) -> None:
    # With --allow-missing-fields the sample may lack some: render them empty, as the
    # check is about everything else that can fail.
    fields = {field: "" for field in needed} | (contact["fields"] or {})
    try:
        templates = messages.TaskTemplates(content.subject, content.html, content.text)
        extra = {"unsubscribe_url": PREVIEW_UNSUBSCRIBE_URL}
        templates.render({**contact, "fields": fields}, extra)
    except messages.TemplateError as exc:
        raise TemplateCheckError(
            f"the templates fail for contact {contact['id']} of the audience: {exc}"
        ) from None
