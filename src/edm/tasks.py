"""Campaign tasks: create (and expand into sub-tasks), start, pause, resume, cancel, show."""

from __future__ import annotations

import time

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from edm import template_checks as checks
from edm import validation
from edm.audience.lists import list_ids
from edm.audience.selection import Audience, audience_filter, count_audience_in
from edm.config import get_settings
from edm.db import queries as q
from edm.db.models import DELIVERY_POLICIES, ContactList, Service, Task, TaskList, TaskService
from edm.db.notify import notify

# Showing tasks lives in edm.task_views (no ORM, fast to import); these names stay here too.
from edm.task_views import TaskView as TaskView
from edm.task_views import list_tasks as list_tasks
from edm.task_views import show_task as show_task


class TaskInputError(ValueError):
    """Bad input for a task command; the message names what is wrong."""


def create_task(
    engine: Engine,
    name: str,
    subject: str,
    *,
    html: str | None = None,
    text_body: str | None = None,
    from_addr: str | None = None,
    services: list[str] | None = None,
    start: bool = False,
    priority: int = 0,
    delivery_policy: str = "at_most_once",
    start_at: float | None = None,
    allow_missing_fields: bool = False,
    audience: Audience | None = None,
) -> int:
    """Create a task and its sub-tasks for `audience` (default: every contact); its
    templates are checked against that audience before anything is kept."""
    name = validation.label(name, "task name", error=TaskInputError)
    for option, value in (("--subject", subject), ("--html", html), ("--text", text_body)):
        if value is not None:
            validation.db_text(value, option, error=TaskInputError)
    if from_addr is not None:
        from_addr = validation.sender(from_addr, "--from", error=TaskInputError)
    services = [validation.db_text(s, "--services", error=TaskInputError) for s in services or []]
    services = list(dict.fromkeys(services))  # a name twice is the same service once
    priority = validation.int32(priority, "--priority", error=TaskInputError)
    if start_at is not None:
        start_at = validation.start_time(start_at, "--at", error=TaskInputError)
    if html is None and text_body is None:
        raise TaskInputError("a task needs --html FILE or --text TEXT")
    if delivery_policy not in DELIVERY_POLICIES:
        raise TaskInputError(f"--delivery must be one of {', '.join(DELIVERY_POLICIES)}")
    content = checks.TaskContent(subject, html, text_body)
    checks.check_sizes(content, get_settings().max_template_bytes)
    checks.check_syntax(content)
    audience = audience or Audience()
    with Session(engine) as session, session.begin():
        service_ids = []
        for service_name in services or []:
            service = session.scalar(select(Service).where(Service.name == service_name))
            if service is None:
                raise TaskInputError(f"unknown service {service_name!r}")
            service_ids.append(service.id)
        task = Task(
            name=name,
            subject=subject,
            html=html,
            text_body=text_body,
            from_addr=from_addr,
            priority=priority,
            delivery_policy=delivery_policy,
            status="draft",
            created_at=time.time(),
            audience_where=audience.where,
        )
        session.add(task)
        session.flush()
        session.add_all(TaskService(task_id=task.id, service_id=sid) for sid in service_ids)
        _keep_audience(session, task.id, audience)
        _expand(session, task.id, audience, new=True)
        conn = session.connection()
        checks.check_against_audience(
            conn,
            content,
            task.id,
            audience_filter(conn, audience),
            allow_missing_fields=allow_missing_fields,
        )
        if start_at is not None:
            if start:
                raise TaskInputError("use either --start or --at, not both")
            # Upkeep in any running instance starts it when the time comes.
            task.status = "scheduled"
            task.scheduled_at = start_at
        elif start:
            _set_running(session, task)
        return task.id


def _keep_audience(session: Session, task_id: int, audience: Audience) -> None:
    conn = session.connection()
    for names, excluded, option in (
        (audience.lists, False, "--lists"),
        (audience.exclude, True, "--exclude"),
    ):
        for list_id in list_ids(conn, list(names), option):
            session.add(TaskList(task_id=task_id, list_id=list_id, excluded=excluded))
    session.flush()


def _kept_audience(session: Session, task: Task) -> Audience:
    """The audience a task was created for (its lists by their names today)."""
    rows = session.execute(
        select(ContactList.name, TaskList.excluded)
        .join(TaskList, TaskList.list_id == ContactList.id)
        .where(TaskList.task_id == task.id)
        .order_by(ContactList.name)
    ).all()
    return Audience(
        tuple(name for name, excluded in rows if not excluded),
        tuple(name for name, excluded in rows if excluded),
        task.audience_where,
    )


def _expand(session: Session, task_id: int, audience: Audience, *, new: bool = False) -> None:
    """One sub-task per contact of the audience; running it again adds only contacts that
    are new (`new`: the task was made in this transaction and has none yet).

    Refused when no contact of the audience is active: the task would complete at once,
    sending nothing.
    """
    conn = session.connection()
    dialect = conn.dialect.name
    q.hold_expansion_lock(conn, exclusive=False)
    conn.execute(q.expand_task(dialect, task_id, audience_filter(conn, audience), new=new))
    pending = conn.execute(q.query(q.AUDIENCE_PENDING, dialect), {"task_id": task_id})
    if not pending.scalar_one():
        if audience == Audience():
            raise TaskInputError("no active contact to send to: import contacts first")
        counted = count_audience_in(conn, audience)
        raise TaskInputError(
            f"no active contact in the audience ({audience.describe()}):"
            f" {counted.suppressed} suppressed, none active"
        )


def _set_running(session: Session, task: Task) -> None:
    task.status = "running"
    task.started_at = task.started_at or time.time()
    notify(session.connection(), "work")


def _get(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id, with_for_update=True)
    if task is None:
        raise TaskInputError(f"unknown task {task_id}")
    return task


def start_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status not in ("draft", "scheduled"):
            raise TaskInputError(f"task {task_id} is {task.status}: only a draft can be started")
        _expand(session, task.id, _kept_audience(session, task))
        _set_running(session, task)


def pause_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status not in ("running", "scheduled"):
            raise TaskInputError(
                f"task {task_id} is {task.status}: only a running or scheduled task pauses"
            )
        task.status = "paused"  # scheduled_at is kept: resume waits for it again
        task.status_reason = "paused by an operator"


def resume_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status != "paused":
            raise TaskInputError(f"task {task_id} is {task.status}: only a paused task resumes")
        task.status_reason = None
        if task.started_at is None and task.scheduled_at is not None:
            # Paused before its time: it waits for it again, and upkeep starts it when due.
            task.status = "scheduled"
        else:
            _set_running(session, task)


def cancel_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status in ("completed", "cancelled"):
            raise TaskInputError(f"task {task_id} is already {task.status}")
        task.status = "cancelled"
        task.completed_at = time.time()
        dialect = session.get_bind().dialect.name
        session.execute(q.query(q.CANCEL_SUBTASKS, dialect), {"task_id": task_id})
