"""The console's tasks: the list, a task's page (funnel, per-service split, sends per
minute, what is stuck, the ETA, its actions, preview and test send) and the new-task form.

Every change goes through the same domain functions as `edm task ...` and the API.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from markupsafe import escape
from sqlalchemy import Connection, Engine, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm import forecast, task_actions, task_views
from edm import tasks as tasks_mod
from edm.audience.lists import list_lists
from edm.audience.selection import Audience, count_audience
from edm.config import Settings
from edm.console import auth
from edm.console.view import (
    Submitted,
    admin_form,
    console_router,
    error_page,
    in_form_words,
    page,
    redirect,
)
from edm.db import console_queries as cq
from edm.db.models import ACTIVE_SUBTASK_STATUSES, DELIVERY_POLICIES, Service, Task
from edm.db.queries import query
from edm.services import list_services
from edm.template_checks import TemplateCheckError
from edm.validation import ID_MAX

router = console_router()

TASKS_SHOWN = 50
CHART_MINUTES = 60
# A task's form carries its templates: room for a large HTML body, not for a file.
TASK_FORM_BYTES = 2 * 1024 * 1024
TASK_FORM_FIELDS = 200
ACTIONS = ("start", "pause", "resume", "cancel")
# The CLI's words in the domain's messages, and the fields of the new-task form.
FORM_WORDS = (
    ("a task needs --html FILE or --text TEXT", "a task needs an HTML body or a text body"),
    ("--subject", "Subject"),
    ("--html", "HTML body"),
    ("--text", "Text body"),
    ("--from", "From"),
    ("--services", "Services"),
    ("--priority", "Priority"),
    ("--delivery", "Delivery"),
    ("--lists", "Lists"),
    ("--exclude", "Leave out"),
    ("--where", "Where"),
    (", or pass --allow-missing-fields", ""),
    ("task name", "Name"),
)


# -- a task's page ------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceSplit:
    name: str
    sent: int  # the task's rows this service sent


@dataclass(frozen=True)
class Bar:
    x: float
    height: float
    minute: float  # its start, epoch seconds
    sent: int


@dataclass(frozen=True)
class Chart:
    """Sends per minute over the last hour, as SVG bars drawn by the template."""

    bars: list[Bar]
    peak: int
    total: int
    width: int = 600
    height: int = 120


@dataclass(frozen=True)
class Stuck:
    past_lease: int
    past_lease_oldest: float | None
    unknown: int
    unknown_oldest: float | None


@dataclass
class TaskPage:
    task: task_views.TaskView
    done: int
    percent: int
    eta: forecast.Eta | None
    split: list[ServiceSplit]
    chart: Chart
    stuck: Stuck
    actions: list[str]
    resendable: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Refreshed every 5 s while something can still change by sending."""
        return self.task.status in ("running", "scheduled")


def actions_for(status: str) -> list[str]:
    """The lifecycle actions a task in `status` allows (tasks.py enforces them)."""
    allowed = {
        "draft": ["start", "cancel"],
        "scheduled": ["start", "pause", "cancel"],
        "running": ["pause", "cancel"],
        "paused": ["resume", "cancel"],
    }
    return allowed.get(status, [])


def _split(conn: Connection, task_id: int, names: dict[int, str]) -> list[ServiceSplit]:
    """The task's sent rows by the service that sent them (from the index of sent rows)."""
    sent = task_views.sent_by_service(conn, task_id)
    return [
        ServiceSplit(names.get(service_id, f"service {service_id}"), n)
        for service_id, n in sorted(sent.items(), key=lambda item: -item[1])
        if service_id is not None
    ]


def _chart(conn: Connection, task_id: int, now: float) -> Chart:
    first = math.floor(now / 60) - CHART_MINUTES + 1
    per_minute = [0] * CHART_MINUTES
    for minute, sent in task_views.sent_per_minute(conn, task_id, first * 60):
        index = int(minute // 60) - first
        if 0 <= index < CHART_MINUTES:
            per_minute[index] += sent
    peak = max(per_minute)
    chart = Chart([], peak, sum(per_minute))
    step = chart.width / CHART_MINUTES
    for index, sent in enumerate(per_minute):
        height = (chart.height - 4) * sent / peak if peak else 0.0
        chart.bars.append(Bar(index * step, height, (first + index) * 60, sent))
    return chart


def _stuck(conn: Connection, task_id: int) -> Stuck:
    dialect = conn.dialect.name
    lease = conn.execute(query(cq.TASK_PAST_LEASE, dialect), {"task_id": task_id}).one()
    unknown = conn.execute(query(cq.TASK_UNKNOWN, dialect), {"task_id": task_id}).one()
    return Stuck(int(lease.rows), lease.oldest, int(unknown.rows), unknown.oldest)


# The reads of a task's page run side by side, each on a connection of its own: on a task
# of a million rows each is a scan of an index or of the task's rows, and together they
# take about as long as the slowest.
_READERS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="task-page")


def _eta(engine: Engine, settings: Settings, task_id: int) -> forecast.Eta | None:
    try:
        return forecast.task_eta(engine, task_id, settings=settings)
    except task_views.TaskNotFound:
        return None


def _sends(engine: Engine, task_id: int) -> tuple[list[ServiceSplit], Chart, Stuck]:
    with engine.connect() as conn:
        names = dict(conn.execute(select(Service.id, Service.name)).all())
        return (
            _split(conn, task_id, names),
            _chart(conn, task_id, time.time()),
            _stuck(conn, task_id),
        )


def task_page(engine: Engine, settings: Settings, task_id: int) -> TaskPage:
    viewing = _READERS.submit(task_views.show_task, engine, task_id, tallied=False)
    funnel = _READERS.submit(task_views.task_funnel, engine, task_id)
    forecasting = _READERS.submit(_eta, engine, settings, task_id)
    counting = _READERS.submit(_sends, engine, task_id)
    view = replace(viewing.result(), funnel=funnel.result())
    eta, (split, chart, stuck) = forecasting.result(), counting.result()
    if view.status not in ("running", "scheduled", "paused"):
        eta = None  # done, cancelled or a draft: nothing to forecast
    left = sum(view.counts.get(status, 0) for status in ACTIVE_SUBTASK_STATUSES)
    done = view.total - left
    return TaskPage(
        task=view,
        done=done,
        percent=100 * done // view.total if view.total else 0,
        eta=eta,
        split=split,
        chart=chart,
        stuck=stuck,
        actions=actions_for(view.status),
        resendable={s: view.counts[s] for s in task_actions.RESENDABLE if view.counts.get(s)},
    )


def _task_id(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and 0 < int(value) <= ID_MAX else None


async def _task_page(request: Request, task_id: str, template: str, **values: Any) -> Response:
    number = _task_id(task_id)
    if number is None:
        return error_page(404, "Not found", f"There is no task {task_id}.")

    def load(app: FastAPI) -> dict[str, Any]:
        return {"page": task_page(app.state.engine, app.state.settings, number)}

    try:
        return await page(request, template, load, title=f"Task {number}", **values)
    except task_views.TaskNotFound:
        return error_page(404, "Not found", f"There is no task {number}.")


@router.get("/console/tasks/new", response_class=HTMLResponse)
async def new_task(request: Request) -> Response:
    return await new_task_form(request)


@router.get("/console/tasks/{task_id}", response_class=HTMLResponse)
async def task(request: Request, task_id: str) -> Response:
    return await _task_page(request, task_id, "task.html")


@router.get("/console/fragments/tasks/{task_id}", response_class=HTMLResponse)
async def task_fragment(request: Request, task_id: str) -> Response:
    """The live part of a task's page, every 5 s while it runs."""
    return await _task_page(request, task_id, "_task_live.html", oob=True)


@router.get("/console/tasks", response_class=HTMLResponse)
async def task_list(request: Request) -> Response:
    before = _task_id(request.query_params.get("before", "")) or ID_MAX

    def load(app: FastAPI) -> dict[str, Any]:
        views = task_views.newest_tasks(app.state.engine, before, TASKS_SHOWN)
        older = views[-1].id if len(views) == TASKS_SHOWN else None
        return {"tasks": views, "older": older}

    return await page(request, "tasks.html", load, title="Tasks")


# -- actions ------------------------------------------------------------------------------
async def _act(request: Request, task_id: str, act: Any, done: str) -> Response:
    """A task action from a button or form: admin only, then back to the task's page."""
    number = _task_id(task_id)
    submitted = await admin_form(request)
    if not isinstance(submitted, Submitted):
        return submitted
    if number is None:
        return error_page(404, "Not found", f"There is no task {task_id}.")
    to = f"/console/tasks/{number}"
    try:
        message = await run_in_threadpool(act, request.app, number, submitted)
    except task_views.TaskNotFound:
        return error_page(404, "Not found", f"There is no task {number}.")
    except ValueError as exc:
        return await redirect(request, to, str(exc), "error")
    return await redirect(request, to, message or done)


def _lifecycle(action: str) -> None:
    function = getattr(tasks_mod, f"{action}_task")

    def act(app: FastAPI, task_id: int, _: Submitted) -> None:
        with app.state.engine.connect() as conn:  # unknown: 404, not "not allowed"
            if conn.scalar(select(Task.id).where(Task.id == task_id)) is None:
                raise task_views.TaskNotFound(f"unknown task {task_id}")
        function(app.state.engine, task_id)

    async def route(request: Request, task_id: str) -> Response:
        past = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}
        return await _act(request, task_id, act, f"Task {task_id} {past[action]}.")

    router.post(f"/console/tasks/{{task_id}}/{action}", name=f"console_{action}_task")(route)


for _action in ACTIONS:
    _lifecycle(_action)


@router.post("/console/tasks/{task_id}/resend")
async def resend(request: Request, task_id: str) -> Response:
    def act(app: FastAPI, number: int, form: Submitted) -> str:
        count = task_actions.resend(app.state.engine, number, form.all("status"))
        return f"{count:,} sub-task(s) of task {number} are pending again, as a new attempt."

    return await _act(request, task_id, act, "")


@router.post("/console/tasks/{task_id}/test-send")
async def test_send(request: Request, task_id: str) -> Response:
    def act(app: FastAPI, number: int, form: Submitted) -> str:
        answer = task_actions.test_send(
            app.state.engine,
            app.state.settings,
            number,
            form.get("to").strip(),
            form.get("contact").strip() or None,
            form.get("service") or None,
        )
        if not answer.accepted:
            raise ValueError(
                f"{answer.service} refused the test message to {answer.to}"
                f" ({answer.error_class}): {answer.error}"
            )
        return (
            f"Test message for {answer.contact_email} sent to {answer.to} through"
            f" {answer.service} (provider id {answer.provider_message_id})."
        )

    return await _act(request, task_id, act, "")


@router.get("/console/tasks/{task_id}/preview", response_class=HTMLResponse)
async def preview(request: Request, task_id: str) -> Response:
    """The message as a contact would get it, framed by the task's page in a sandboxed
    iframe: its HTML is the operator's, never run with the console's rights."""
    number = _task_id(task_id)
    email = request.query_params.get("contact", "").strip() or None
    if number is None:
        return error_page(404, "Not found", f"There is no task {task_id}.")

    def load(app: FastAPI) -> dict[str, Any]:
        return {"preview": task_actions.preview(app.state.engine, number, email)}

    try:
        return await page(
            request, "preview.html", load, title=f"Preview of task {number}", task_id=number
        )
    except task_views.TaskNotFound:
        return error_page(404, "Not found", f"There is no task {number}.")
    except ValueError as exc:
        return error_page(400, "No preview", str(exc))


@router.get("/console/tasks/{task_id}/preview.html", response_class=HTMLResponse)
async def preview_body(request: Request, task_id: str) -> Response:
    number = _task_id(task_id)
    email = request.query_params.get("contact", "").strip() or None
    if number is None or await auth.current_session(request) is None:
        return Response(status_code=404)
    try:
        shown = await run_in_threadpool(
            task_actions.preview, request.app.state.engine, number, email
        )
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    body = shown.html if shown.html is not None else f"<pre>{escape(shown.text or '')}</pre>"
    return HTMLResponse(
        body,
        headers={
            # Its own policy: no script at all, images and styles as a mail client shows them.
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src * data:;"
            " style-src 'unsafe-inline'; font-src * data:",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/console/tasks/{task_id}/export.csv")
async def export(request: Request, task_id: str) -> Response:
    number = _task_id(task_id)
    if await auth.current_session(request) is None:
        return Response(status_code=401)
    if number is None:
        return error_page(404, "Not found", f"There is no task {task_id}.")
    statuses = request.query_params.getlist("status") or list(task_actions.RESENDABLE)
    try:
        lines = await run_in_threadpool(
            lambda: task_actions.export_lines(request.app.state.engine, number, statuses)
        )
    except task_views.TaskNotFound:
        return error_page(404, "Not found", f"There is no task {number}.")
    except ValueError as exc:
        return error_page(400, "Bad request", str(exc))
    name = f"task-{number}-{'-'.join(statuses)}.csv"
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# -- a new task ---------------------------------------------------------------------------
def _form_choices(app: FastAPI) -> dict[str, Any]:
    return {
        "lists": list_lists(app.state.engine),
        "services": list_services(app.state.engine),
        "policies": DELIVERY_POLICIES,
    }


async def new_task_form(
    request: Request, values: dict[str, Any] | None = None, error: str | None = None
) -> Response:
    response = await page(
        request, "new_task.html", _form_choices, title="New task", form=values or {}, error=error
    )
    if error is not None and response.status_code == 200:
        response.status_code = 400
    return response


@router.get("/console/fragments/audience-count", response_class=HTMLResponse)
async def audience_count(request: Request) -> Response:
    """How many the audience the form describes would reach, as the operator types."""
    params = request.query_params

    def load(app: FastAPI) -> dict[str, Any]:
        try:
            audience = Audience.of(
                params.getlist("lists") or None,
                params.getlist("exclude") or None,
                params.get("where", "").strip() or None,
            )
            return {"count": count_audience(app.state.engine, audience), "problem": None}
        except ValueError as exc:
            return {"count": None, "problem": str(exc)}

    return await page(request, "_audience_count.html", load, fragment=True)


@router.post("/console/tasks", response_class=HTMLResponse)
async def create(request: Request) -> Response:
    submitted = await admin_form(request, TASK_FORM_BYTES, TASK_FORM_FIELDS)
    if not isinstance(submitted, Submitted):
        return submitted
    form = submitted
    values: dict[str, Any] = {
        "name": form.get("name"),
        "subject": form.get("subject"),
        "from_addr": form.get("from_addr"),
        "html": form.get("html"),
        "text": form.get("text"),
        "lists": form.all("lists"),
        "exclude": form.all("exclude"),
        "where": form.get("where"),
        "services": form.all("services"),
        "priority": form.get("priority", "0"),
        "delivery": form.get("delivery", DELIVERY_POLICIES[0]),
        "start": form.get("start") == "on",
    }

    def make(app: FastAPI) -> int:
        try:
            priority = int(values["priority"] or 0)
        except ValueError:
            raise tasks_mod.TaskInputError("priority must be a whole number") from None
        audience = None
        if values["lists"] or values["exclude"] or values["where"].strip():
            audience = Audience.of(
                values["lists"] or None, values["exclude"] or None, values["where"].strip() or None
            )
        return tasks_mod.create_task(
            app.state.engine,
            values["name"],
            values["subject"],
            html=values["html"] or None,
            text_body=values["text"] or None,
            from_addr=values["from_addr"].strip() or None,
            services=values["services"] or None,
            start=values["start"],
            priority=priority,
            delivery_policy=values["delivery"],
            audience=audience,
        )

    try:
        task_id = await run_in_threadpool(make, request.app)
    except (TemplateCheckError, ValueError) as exc:
        return await new_task_form(request, values, in_form_words(str(exc), FORM_WORDS))
    done = "created and started" if values["start"] else "created as a draft: check it, then start"
    return await redirect(request, f"/console/tasks/{task_id}", f"Task {task_id} {done}.")
