"""Campaign tasks: create (and expand into sub-tasks), start, pause, resume, cancel, show."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from edm import messages
from edm.db import queries as q
from edm.db.models import DELIVERY_POLICIES, Service, Task, TaskService
from edm.db.notify import notify


class TaskInputError(ValueError):
    """Bad input for a task command; the message names what is wrong."""


@dataclass(frozen=True)
class TaskView:
    id: int
    name: str
    status: str
    total: int
    counts: dict[str, int]
    services: list[str]
    delivery_policy: str
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    completed_at: float | None

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "total": self.total,
            "counts": self.counts,
            "services": self.services,
            "delivery_policy": self.delivery_policy,
            "created_at": self.created_at,
            "scheduled_at": self.scheduled_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
        }


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
) -> int:
    if not name.strip():
        raise TaskInputError("task name must not be empty")
    if html is None and text_body is None:
        raise TaskInputError("a task needs --html FILE or --text TEXT")
    if delivery_policy not in DELIVERY_POLICIES:
        raise TaskInputError(f"--delivery must be one of {', '.join(DELIVERY_POLICIES)}")
    try:
        messages.validate("subject", subject)
        messages.validate("html", html, html=True)
        messages.validate("text", text_body)
    except messages.TemplateError as exc:
        raise TaskInputError(str(exc)) from None
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
        )
        session.add(task)
        session.flush()
        session.add_all(TaskService(task_id=task.id, service_id=sid) for sid in service_ids)
        _expand(session, task.id)
        if start_at is not None:
            if start:
                raise TaskInputError("use either --start or --at, not both")
            # Upkeep in any running instance starts it when the time comes.
            task.status = "scheduled"
            task.scheduled_at = start_at
        elif start:
            _set_running(session, task)
        return task.id


def _expand(session: Session, task_id: int) -> None:
    """One sub-task per contact; running it again adds only contacts that are new."""
    dialect = session.get_bind().dialect.name
    session.execute(text(q.EXPAND_TASK[dialect]), {"task_id": task_id})


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
        _expand(session, task.id)
        _set_running(session, task)


def pause_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status not in ("running", "scheduled"):
            raise TaskInputError(f"task {task_id} is {task.status}: only a running task pauses")
        task.status = "paused"


def resume_task(engine: Engine, task_id: int) -> None:
    with Session(engine) as session, session.begin():
        task = _get(session, task_id)
        if task.status != "paused":
            raise TaskInputError(f"task {task_id} is {task.status}: only a paused task resumes")
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


def task_counts(session: Session, task_id: int) -> dict[str, int]:
    dialect = session.get_bind().dialect.name
    rows = session.execute(q.query(q.TASK_COUNTS, dialect), {"task_id": task_id})
    return {row.status: int(row.n) for row in rows}


def show_task(engine: Engine, task_id: int) -> TaskView:
    with Session(engine) as session:
        task = session.get(Task, task_id)
        if task is None:
            raise TaskInputError(f"unknown task {task_id}")
        return _view(session, task)


def list_tasks(engine: Engine) -> list[TaskView]:
    with Session(engine) as session:
        return [_view(session, task) for task in session.scalars(select(Task).order_by(Task.id))]


def _view(session: Session, task: Task) -> TaskView:
    counts = task_counts(session, task.id)
    names = session.scalars(
        select(Service.name)
        .join(TaskService, TaskService.service_id == Service.id)
        .where(TaskService.task_id == task.id)
        .order_by(Service.name)
    ).all()
    return TaskView(
        id=task.id,
        name=task.name,
        status=task.status,
        total=sum(counts.values()),
        counts=counts,
        services=list(names),
        delivery_policy=task.delivery_policy,
        created_at=task.created_at,
        scheduled_at=task.scheduled_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
    )
