"""What an operator does with a task besides its lifecycle: preview its message, send a
test of it, resend what failed, page through and export its sub-tasks.

The CLI (`edm task preview|test-send|resend|sub-tasks|export`) and the REST API
(`/api/tasks/{id}/...`) both call these, so each rule lives here once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TextIO

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Update,
    and_,
    exists,
    false,
    literal_column,
    select,
    text,
    true,
)

from edm import validation
from edm.config import Settings, get_settings
from edm.db import queries as q
from edm.db.models import SUBTASK_STATUSES, Contact, Service, SubTask, Task, TaskService
from edm.db.notify import notify
from edm.db.secrets import signing_key
from edm.messages import MessageBuilder, TaskTemplates, TemplateError
from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    ProviderError,
    SendResult,
)
from edm.providers.registry import make_provider
from edm.services import send_one
from edm.task_views import TaskNotFound, TaskView, _view

TASKS = Task.__table__
SUB_TASKS = SubTask.__table__
CONTACTS = Contact.__table__
SERVICES = Service.__table__

# What `resend` takes back: the rows that ended without the provider surely having them.
RESENDABLE = ("failed", "unknown")
MAX_PAGE = 10_000
EXPORT_BATCH = 1_000
TEST_SUBJECT_PREFIX = "[test] "
EXPORT_COLUMNS = (
    "id",
    "email",
    "status",
    "service",
    "attempts",
    "last_error",
    "error_class",
    "sent_at",
    "delivered_at",
    "opened_at",
    "clicked_at",
    "bounced_at",
    "bounce_type",
)
_TIME_COLUMNS = frozenset({"sent_at", "delivered_at", "opened_at", "clicked_at", "bounced_at"})


class TaskActionError(ValueError):
    """Bad input for a task action; `field` names the input at fault (for the API)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TaskStateError(TaskActionError):
    """The input is fine but the task, its services or its contact do not allow it now."""


@dataclass(frozen=True)
class Preview:
    subject: str
    html: str | None
    text: str | None
    contact_email: str


@dataclass(frozen=True)
class TestSend:
    """The provider's answer to a test message: accepted, or its classified refusal."""

    service: str
    to: str
    contact_email: str
    subject: str
    accepted: bool
    provider_message_id: str | None = None
    duplicate: bool = False
    error_class: str | None = None  # transient | recipient | request | service | unknown
    error: str | None = None
    code: str | None = None  # the provider's own code for the refusal


@dataclass(frozen=True)
class SubTaskRow:
    id: int
    email: str
    status: str
    service: str | None
    attempts: int
    last_error: str | None
    error_class: str | None
    sent_at: float | None
    delivered_at: float | None
    opened_at: float | None
    clicked_at: float | None
    bounced_at: float | None
    bounce_type: str | None


# -- input shared by the CLI and the API ---------------------------------------------------------
def parse_time(value: str, option: str = "--at") -> float:
    """An ISO 8601 time as epoch seconds; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):  # OverflowError: a zone pushes it past year 1..9999
        raise TaskActionError(
            f"{option} must be an ISO 8601 time such as 2026-12-01T09:00Z, or 'now', not {value!r}",
            option.lstrip("-"),
        ) from None


def statuses_of(
    values: list[str], field: str, allowed: tuple[str, ...] = SUBTASK_STATUSES
) -> list[str]:
    """Sub-task statuses as given (each once, in the given order); none given: `allowed`."""
    chosen = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    wrong = [v for v in chosen if v not in allowed]
    if wrong:
        raise TaskActionError(
            f"{field} must be among {', '.join(allowed)}, not {', '.join(map(repr, wrong))}",
            field.lstrip("-"),
        )
    return chosen or list(allowed)


def task_page(engine: Engine, after: int, limit: int) -> list[TaskView]:
    """Tasks by id after `after`: a page of `edm task list` (same columns, same view)."""
    _check_page(after, limit)
    page = text(f"SELECT {q._TASK_COLUMNS} FROM tasks WHERE id > :after ORDER BY id LIMIT :limit")
    with engine.connect() as conn:
        rows = conn.execute(page, {"after": after, "limit": limit}).all()
        return [_view(conn, row, details=False) for row in rows]


# -- preview and test send -----------------------------------------------------------------------
def preview(
    engine: Engine, task_id: int, email: str | None, settings: Settings | None = None
) -> Preview:
    """The task's message for one of its contacts (default: the next one due), rendered
    as the worker renders it, its unsubscribe link included."""
    settings = settings or get_settings()
    with engine.connect() as conn:
        task = _task(conn, task_id)
        contact = _contact(conn, task_id, email)
        service = _usable_service(conn, task_id)
    builder = _builder(engine, task, service.options if service else {}, settings)
    message = _build(builder, task_id, contact, sub_task_id=contact["sub_task_id"], key="preview")
    return Preview(message.subject, message.html, message.text, contact["email"])


def test_send(
    engine: Engine,
    settings: Settings,
    task_id: int,
    to: str,
    email: str | None,
    service: str | None,
) -> TestSend:
    """Send the task's message for one contact to `to` through one service (default: the
    task's first usable one), its subject marked as a test; the provider's answer, a
    refusal included, is what a campaign would meet.

    Its unsubscribe link and headers name no real sub-task (id 0, as `edm service test`
    does), so a click on the test copy cannot unsubscribe the contact and its tracking
    events match nothing. Nothing is recorded: no sub-task, no send attempt, no freeze.
    """
    from edm.contacts import valid_email  # email-validator: only this action needs it

    if valid_email(to) is None:
        raise TaskActionError(f"not an email address to send to: {to!r}", "to")
    with engine.connect() as conn:
        task = _task(conn, task_id)
        contact = _contact(conn, task_id, email)
        chosen = _named_service(conn, service) if service else _usable_service(conn, task_id)
    if chosen is None:
        raise TaskStateError(
            f"task {task_id} has no enabled, unfrozen service to send through: name one",
            "service",
        )
    builder = _builder(engine, task, chosen.options, settings)
    key = f"test-{uuid.uuid4().hex}"
    message = _build(builder, 0, contact, sub_task_id=0, key=key)
    message = dataclasses.replace(
        message,
        to_email=to.strip(),
        to_name=None,
        subject=TEST_SUBJECT_PREFIX + message.subject,
    )
    sent = partial(TestSend, chosen.name, message.to_email, contact["email"], message.subject)
    try:
        result = _send_once(chosen, message, settings)
    except ProviderError as exc:
        return sent(False, error_class=exc.error_class, error=str(exc), code=exc.code)
    return sent(True, result.provider_message_id, result.duplicate)


def _task(conn: Connection, task_id: int) -> Row:
    validation.record_id(task_id, "task", error=TaskNotFound)
    row = conn.execute(q.query(q.TASK_CONTENT, conn.dialect.name), {"task_id": task_id}).first()
    if row is None:
        raise TaskNotFound(f"unknown task {task_id}")
    return row


def _contact(conn: Connection, task_id: int, email: str | None) -> dict:
    """The contact to render for, with its sub-task of this task: the one named, else the
    first pending (the next to be sent), else the task's first."""
    query = (
        select(
            SUB_TASKS.c.id.label("sub_task_id"),
            CONTACTS.c.id,
            CONTACTS.c.email,
            CONTACTS.c.name,
            CONTACTS.c.fields,
            CONTACTS.c.status,
        )
        .join(CONTACTS, CONTACTS.c.id == SUB_TASKS.c.contact_id)
        .where(SUB_TASKS.c.task_id == task_id)
    )
    if email is not None:
        row = conn.execute(query.where(CONTACTS.c.email == _address(email))).first()
        if row is None:
            raise TaskActionError(
                f"{email.strip()!r} is not a contact of task {task_id}'s audience", "contact"
            )
    else:
        row = (
            conn.execute(
                query.where(SUB_TASKS.c.status == "pending").order_by(SUB_TASKS.c.id).limit(1)
            ).first()
            or conn.execute(query.order_by(SUB_TASKS.c.id).limit(1)).first()
        )
        if row is None:
            raise TaskStateError(f"task {task_id} has no sub-task to render", "contact")
    return dict(row._mapping)


def _address(email: str) -> str:
    from edm.contacts import InvalidAddress, normalise_email

    try:
        return normalise_email(email)
    except InvalidAddress as exc:
        raise TaskActionError(
            f"contact {email.strip()!r} is not an email address: {exc}", "contact"
        ) from None


def _usable_service(conn: Connection, task_id: int) -> Row | None:
    """The task's first service that can send (the claim's rule: its listed services,
    else every service), by id."""
    listed = exists().where(TaskService.task_id == task_id)
    allowed = exists().where(
        and_(TaskService.task_id == task_id, TaskService.service_id == SERVICES.c.id)
    )
    return conn.execute(
        select(SERVICES.c.name, SERVICES.c.provider, SERVICES.c.options)
        .where(SERVICES.c.enabled == true(), SERVICES.c.frozen == false())
        .where(~listed | allowed)
        .order_by(SERVICES.c.id)
        .limit(1)
    ).first()


def _named_service(conn: Connection, name: str) -> Row:
    try:
        name = validation.db_text(name.strip(), "service", error=ValueError)
    except ValueError as exc:
        raise TaskActionError(str(exc), "service") from None
    row = conn.execute(
        select(SERVICES.c.name, SERVICES.c.provider, SERVICES.c.options).where(
            SERVICES.c.name == name
        )
    ).first()
    if row is None:
        raise TaskActionError(f"unknown service {name!r}", "service")
    return row


def _builder(engine: Engine, task: Row, options: dict, settings: Settings) -> MessageBuilder:
    """The worker's MessageBuilder for this task (scheduler/worker.py `_load_task`)."""
    try:
        templates = TaskTemplates(task.subject, task.html, task.text_body)
    except TemplateError as exc:
        raise TaskStateError(f"the templates of task {task.id} do not compile: {exc}") from None
    return MessageBuilder(
        templates,
        from_addr=task.from_addr,
        default_from=(options or {}).get("from"),
        public_url=settings.public_url,
        signing_key=signing_key(engine, settings.secret_key),
    )


def _build(
    builder: MessageBuilder, task_id: int, contact: dict, *, sub_task_id: int, key: str
) -> OutgoingMessage:
    try:
        return builder.build(
            sub_task_id=sub_task_id, task_id=task_id, idempotency_key=key, contact=contact
        )
    except TemplateError as exc:
        raise TaskStateError(
            f"the templates fail for contact {contact['email']}: {exc}", "contact"
        ) from None


def _send_once(service: Row, message: OutgoingMessage, settings: Settings) -> SendResult:
    """One provider call outside any task, as `edm service test` makes it."""
    try:
        provider = make_provider(service.provider, service.name, dict(service.options or {}))
    except OptionError as exc:
        raise TaskStateError(f"service {service.name} cannot start: {exc}", "service") from None

    return send_one(provider, message, settings.lease_seconds)


# -- resend --------------------------------------------------------------------------------------
def resend(engine: Engine, task_id: int, statuses: list[str]) -> int:
    """Make the task's sub-tasks in `statuses` (failed, unknown) pending again as a new
    attempt; how many. A completed task runs again.

    Each row gets a new idempotency key: the old key belongs to a send that failed, or
    whose outcome is unknown, and a provider that remembers keys would drop the resend as
    a repeat of it. Attempts start again from 0 and nothing pins the row to a service.
    Rows of suppressed contacts stay as they are: upkeep would only skip them.
    """
    validation.record_id(task_id, "task", error=TaskNotFound)
    statuses = statuses_of(statuses, "statuses", RESENDABLE)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        task = conn.execute(
            select(TASKS.c.status).where(TASKS.c.id == task_id).with_for_update()
        ).first()
        if task is None:
            raise TaskNotFound(f"unknown task {task_id}")
        if task.status == "cancelled":
            raise TaskStateError(f"task {task_id} is cancelled: nothing of it is sent again")
        resent = conn.execute(_resend_rows(dialect, task_id, statuses)).rowcount
        if resent and task.status == "completed":
            conn.execute(
                TASKS.update()
                .where(TASKS.c.id == task_id)
                .values(status="running", completed_at=None, status_reason=None)
            )
        if resent:
            notify(conn, "work")
    return int(resent)


def _resend_rows(dialect: str, task_id: int, statuses: list[str]) -> Update:
    """The rows back to `pending` as the claim expects them: no lease, no claim, no pin,
    due now. Delivery facts stay: they are what the event log says."""
    active = select(CONTACTS.c.id).where(CONTACTS.c.status == "active")
    return (
        SUB_TASKS.update()
        .where(
            SUB_TASKS.c.task_id == task_id,
            SUB_TASKS.c.status.in_(statuses),
            SUB_TASKS.c.contact_id.in_(active),
        )
        .values(
            status="pending",
            idempotency_key=literal_column(q.RANDOM_KEY[dialect]),
            attempts=0,
            next_attempt_at=0.0,
            last_error=None,
            error_class=None,
            pinned_service_id=None,
            lease_token=None,
            lease_expires_at=None,
            claimed_by=None,
            provider_message_id=None,
            sending_at=None,
            first_sending_at=None,
            sent_at=None,
            finished_at=None,
        )
    )


# -- listing and export --------------------------------------------------------------------------
def sub_tasks(
    engine: Engine, task_id: int, status: str | None, after: int, limit: int
) -> list[SubTaskRow]:
    """The task's sub-tasks by id after `after` (a page), of one status or all."""
    validation.record_id(task_id, "task", error=TaskNotFound)
    _check_page(after, limit)
    statuses = statuses_of([status] if status is not None else [], "status")
    with engine.connect() as conn:
        _task(conn, task_id)
        return _rows(conn, task_id, statuses, after, limit)


def export_sub_tasks(engine: Engine, task_id: int, statuses: list[str], out: TextIO) -> int:
    """The task's sub-tasks in `statuses` (none: all) as CSV on `out`; the rows written."""
    lines = 0
    for line in export_lines(engine, task_id, statuses):
        out.write(line)
        lines += 1
    return lines - 1  # the header is no row


def export_lines(engine: Engine, task_id: int, statuses: list[str]) -> Iterator[str]:
    """The CSV, a line at a time. The task and statuses are checked before the first
    line, so a caller can still answer with an error. Rows are read a batch at a time,
    each batch its own short transaction: a slow reader holds no lock the workers need."""
    validation.record_id(task_id, "task", error=TaskNotFound)
    chosen = statuses_of(statuses, "status")
    with engine.connect() as conn:
        _task(conn, task_id)
    return _csv_lines(engine, task_id, chosen)


def _csv_lines(engine: Engine, task_id: int, statuses: list[str]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(values: list[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(list(EXPORT_COLUMNS))
    after = 0
    while True:
        with engine.connect() as conn:
            rows = _rows(conn, task_id, statuses, after, EXPORT_BATCH)
        for row in rows:
            yield line([_cell(name, getattr(row, name)) for name in EXPORT_COLUMNS])
        if len(rows) < EXPORT_BATCH:
            return
        after = rows[-1].id


def _cell(name: str, value: object) -> object:
    if value is None:
        return ""
    if name in _TIME_COLUMNS:
        return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")  # type: ignore[arg-type]
    return value


def _rows(
    conn: Connection, task_id: int, statuses: list[str], after: int, limit: int
) -> list[SubTaskRow]:
    s = SUB_TASKS
    query = (
        select(
            s.c.id,
            CONTACTS.c.email,
            s.c.status,
            SERVICES.c.name.label("service"),
            s.c.attempts,
            s.c.last_error,
            s.c.error_class,
            s.c.sent_at,
            s.c.delivered_at,
            s.c.opened_at,
            s.c.clicked_at,
            s.c.bounced_at,
            s.c.bounce_type,
        )
        .join(CONTACTS, CONTACTS.c.id == s.c.contact_id)
        .outerjoin(SERVICES, SERVICES.c.id == s.c.service_id)
        .where(s.c.task_id == task_id, s.c.id > after)
        .order_by(s.c.id)
        .limit(limit)
    )
    if set(statuses) != set(SUBTASK_STATUSES):
        query = query.where(s.c.status.in_(statuses))
    return [SubTaskRow(**row._mapping) for row in conn.execute(query)]


def _check_page(after: int, limit: int) -> None:
    for field, value, low, high in (
        ("after", after, 0, validation.ID_MAX),
        ("limit", limit, 1, MAX_PAGE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TaskActionError(
                f"{field} must be a whole number from {low} to {high}, not {value}", field
            )
