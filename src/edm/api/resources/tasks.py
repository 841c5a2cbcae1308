"""`/api/tasks`: create, list, show, start, pause, resume, cancel; preview, test-send,
sub-tasks, export and resend. The rules are the CLI's (`edm.tasks`, `edm.task_actions`);
this module turns their refusals into the API's one error shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from edm import messages, task_actions, validation
from edm import tasks as tasks_mod
from edm.api.access import Caller
from edm.api.errors import ERROR_RESPONSES, ApiError
from edm.api.pages import Cursor, Limit, Page, after_id, next_cursor
from edm.audience.selection import Audience
from edm.task_views import TaskNotFound
from edm.template_checks import TaskContent, TemplateCheckError, required_fields

router = APIRouter(prefix="/api", tags=["tasks"])
T = TypeVar("T")
ERRORS = ERROR_RESPONSES

TaskId = Annotated[int, Path(ge=1, le=validation.ID_MAX, description="the task's id")]
SubTaskStatus = Literal[
    "pending", "allocated", "sending", "sent", "unknown", "failed", "skipped", "cancelled"
]
Resendable = Literal["failed", "unknown"]
Name = Annotated[str, Field(max_length=200)]


# -- bodies and answers ----------------------------------------------------------------------------
class TaskIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(description="Jinja2 template")
    html: str | None = Field(None, description="Jinja2 template; values are HTML-escaped")
    text: str | None = Field(None, description="Jinja2 template; default: made from the HTML")
    from_addr: str | None = Field(
        None, alias="from", max_length=320, description="default: each service's own sender"
    )
    services: list[Name] = Field(
        default_factory=list, max_length=100, description="default: every service"
    )
    lists: list[Name] = Field(
        default_factory=list, max_length=100, description="default: every contact"
    )
    exclude: list[Name] = Field(default_factory=list, max_length=100)
    where: str | None = Field(None, max_length=4000, description='e.g. city = "Paris"')
    priority: int = Field(0, ge=validation.INT32_MIN, le=validation.INT32_MAX)
    delivery: Literal["at_most_once", "at_least_once"] = "at_most_once"
    start: bool = False
    at: str | None = Field(
        None, max_length=100, description="ISO 8601 start time (no zone: UTC), or `now`"
    )
    allow_missing_fields: bool = False


class ReasonOut(BaseModel):
    status: str
    error_class: str | None
    message: str
    count: int


class TaskSummaryOut(BaseModel):
    """A task as `edm task list --json` shows it."""

    id: int
    name: str
    status: str
    status_reason: str | None
    total: int
    counts: dict[str, int]
    services: list[str]
    delivery_policy: str
    priority: int
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    completed_at: float | None
    lists: list[str]
    exclude: list[str]
    where: str | None


class TaskOut(TaskSummaryOut):
    """A task as `edm task show --json` shows it: counts, funnel, rates, reasons."""

    sent_last_minute: int
    reasons: list[ReasonOut]
    funnel: dict[str, int]
    shown: dict[str, int]
    rates: dict[str, float]


class PreviewOut(BaseModel):
    contact: str
    subject: str
    html: str | None
    text: str | None


class TestSendIn(BaseModel):
    to: str = Field(max_length=320, description="the address that receives the test")
    contact: str | None = Field(
        None, max_length=320, description="the contact to render for; default: the next due"
    )
    service: str | None = Field(
        None, max_length=200, description="default: the task's first usable service"
    )


class TestSendOut(BaseModel):
    """The provider's answer: a refusal is an answer too (`accepted` false)."""

    accepted: bool
    service: str
    to: str
    contact: str
    subject: str
    provider_message_id: str | None
    duplicate: bool
    error_class: str | None
    error: str | None
    code: str | None


class SubTaskOut(BaseModel):
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


class ResendIn(BaseModel):
    statuses: list[Resendable] = Field(
        default_factory=lambda: ["failed", "unknown"], min_length=1, max_length=10
    )


class ResendOut(BaseModel):
    resent: int
    task: TaskOut


class CsvResponse(StreamingResponse):
    media_type = "text/csv"


# -- refusals as answers ---------------------------------------------------------------------------
# The CLI option a message names, as the field of a request body.
_OPTION = re.compile(r"--([a-z][a-z-]*)")
_BODY_FIELDS = {
    "subject",
    "html",
    "text",
    "from",
    "services",
    "priority",
    "at",
    "delivery",
    "start",
    "lists",
    "exclude",
    "where",
}


def _refused(exc: ValueError) -> ApiError:
    """A domain refusal: unknown task 404, a state that does not allow it 409, else 400."""
    if isinstance(exc, TaskNotFound):
        return ApiError(404, "not_found", str(exc))
    field = getattr(exc, "field", None)
    if isinstance(exc, task_actions.TaskStateError):
        return ApiError(409, "conflict", str(exc), field)
    return ApiError(400, "invalid_input", str(exc), field)


def _create_field(message: str, body: TaskIn) -> str | None:
    """The body field a refusal of `create_task` is about (its messages name CLI options)."""
    if message.startswith("task name"):
        return "name"
    if message.startswith("unknown service"):
        return "services"
    if message.startswith("no active contact"):
        return "where" if body.where and not body.lists else "lists"
    found = _OPTION.search(message)
    if found and found.group(1) in _BODY_FIELDS:
        return found.group(1)
    return None


def _template_field(message: str, content: TaskContent) -> str:
    """Which template a template check refused: named in the message (syntax, size), the
    first that needs a field the audience lacks, else the first that fails on its own."""
    for name, source, _ in content.parts():
        if source is not None and re.search(rf"\b{name} template\b", message):
            return name
    for name, source, is_html in content.parts():
        needed = messages.required_fields(source, html=is_html)
        if any(f"field `{field}`" in message for field in needed):
            return name
    blanks = {field: "" for field in required_fields(content)}
    for name, source, _ in content.parts():
        if source is None:
            continue
        alone = TaskContent(
            source if name == "subject" else "",
            source if name == "html" else None,
            source if name == "text" else None,
        )
        try:
            templates = messages.TaskTemplates(alone.subject, alone.html, alone.text)
            templates.render(
                {"email": "preview@example.invalid", "fields": blanks},
                {"unsubscribe_url": "https://unsubscribe.invalid/"},
            )
        except messages.TemplateError:
            return name
    return "html" if content.html is not None else "text"


def _audience(body: TaskIn) -> Audience:
    for field, names in (("lists", body.lists), ("exclude", body.exclude)):
        for name in names:
            _storable(name, field)
    if body.where is not None:
        _storable(body.where, "where")
    try:
        return Audience.of(body.lists, body.exclude, body.where)
    except ValueError as exc:
        raise ApiError(400, "invalid_condition", str(exc), "where") from None


def _storable(value: str, field: str) -> None:
    """Text the database can compare: PostgreSQL refuses a NUL even in a query."""
    try:
        validation.db_text(value, field, error=ValueError)
    except ValueError as exc:
        raise ApiError(400, "invalid_input", str(exc), field) from None


def _start(body: TaskIn) -> tuple[bool, float | None]:
    """(start now, start at) from `start` and `at`."""
    if body.at is None:
        return body.start, None
    if body.at.strip().lower() == "now":
        return True, None
    return body.start, task_actions.parse_time(body.at, "at")


def _after(cursor: str | None) -> int:
    try:
        after = after_id(cursor)
    except ValueError:  # digits that int() does not read, such as "²"
        after = -1
    if not 0 <= after <= validation.ID_MAX:
        raise ApiError(400, "invalid_request", "not a cursor this server gave", "cursor")
    return after


async def _call(function: Callable[..., T], *args: object) -> T:
    """A domain call in the thread pool, its refusals as answers."""
    try:
        return await run_in_threadpool(function, *args)
    except ValueError as exc:
        raise _refused(exc) from None


async def _show(request: Request, task_id: int) -> TaskOut:
    view = await _call(tasks_mod.show_task, request.app.state.engine, task_id)
    return TaskOut.model_validate(view.as_json())


# -- the routes ------------------------------------------------------------------------------------
@router.get("/tasks", response_model=Page[TaskSummaryOut], responses=ERRORS)
async def get_tasks(
    request: Request, _: Caller, cursor: Cursor = None, limit: Limit = 100
) -> Page[TaskSummaryOut]:
    """Tasks by id, a page at a time."""
    views = await _call(task_actions.task_page, request.app.state.engine, _after(cursor), limit)
    items = [TaskSummaryOut.model_validate(view.as_json()) for view in views]
    return Page(items=items, next_cursor=next_cursor([item.id for item in items], limit))


@router.post("/tasks", response_model=TaskOut, status_code=201, responses=ERRORS)
async def post_task(request: Request, body: TaskIn, _: Caller) -> TaskOut:
    """Create a task with one sub-task per contact of its audience; its templates are
    checked against that audience first."""
    audience = _audience(body)
    try:
        start, start_at = _start(body)
        engine = request.app.state.engine
        task_id = await run_in_threadpool(_create, engine, body, audience, start, start_at)
    except TemplateCheckError as exc:
        content = TaskContent(body.subject, body.html, body.text)
        raise ApiError(
            400, "invalid_template", str(exc), _template_field(str(exc), content)
        ) from None
    except task_actions.TaskActionError as exc:
        raise _refused(exc) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_input", str(exc), _create_field(str(exc), body)) from None
    return await _show(request, task_id)


def _create(
    engine: Engine, body: TaskIn, audience: Audience, start: bool, start_at: float | None
) -> int:
    return tasks_mod.create_task(
        engine,
        body.name,
        body.subject,
        html=body.html,
        text_body=body.text,
        from_addr=body.from_addr,
        services=body.services,
        start=start,
        priority=body.priority,
        delivery_policy=body.delivery,
        start_at=start_at,
        allow_missing_fields=body.allow_missing_fields,
        audience=audience,
    )


@router.get("/tasks/{task_id}", response_model=TaskOut, responses=ERRORS)
async def get_task(request: Request, task_id: TaskId, _: Caller) -> TaskOut:
    """Status, counts by status, funnel and rates of sent, failure reasons, audience."""
    return await _show(request, task_id)


def _lifecycle(action: str, doc: str) -> None:
    """`POST /api/tasks/{id}/<action>`: 404 for an unknown task, 409 when its state does
    not allow the action."""
    function = getattr(tasks_mod, f"{action}_task")

    async def act(request: Request, task_id: TaskId, _: Caller) -> TaskOut:
        await _show(request, task_id)  # 404 first: the action says only "not allowed"
        try:
            await run_in_threadpool(function, request.app.state.engine, task_id)
        except ValueError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return await _show(request, task_id)

    act.__doc__ = doc
    router.post(
        f"/tasks/{{task_id}}/{action}",
        response_model=TaskOut,
        responses=ERRORS,
        name=f"{action}_task",
    )(act)


_lifecycle("start", "Start sending a draft or scheduled task now.")
_lifecycle("pause", "Pause a running or scheduled task.")
_lifecycle("resume", "Resume a paused task (one paused before its start time waits for it).")
_lifecycle("cancel", "Cancel a task: its sub-tasks not yet sent are cancelled.")


@router.get("/tasks/{task_id}/preview", response_model=PreviewOut, responses=ERRORS)
async def get_preview(
    request: Request,
    task_id: TaskId,
    _: Caller,
    contact: Annotated[
        str | None, Query(max_length=320, description="default: the next contact due")
    ] = None,
) -> PreviewOut:
    """The task's message for one of its contacts, as the worker renders it."""
    state = request.app.state
    shown = await _call(task_actions.preview, state.engine, task_id, contact, state.settings)
    return PreviewOut.model_validate({**vars(shown), "contact": shown.contact_email})


@router.post("/tasks/{task_id}/test-send", response_model=TestSendOut, responses=ERRORS)
async def post_test_send(
    request: Request, task_id: TaskId, body: TestSendIn, _: Caller
) -> TestSendOut:
    """Send the task's message, rendered for one contact, to `to` with its subject starting
    "[test] ". The answer is the provider's: a refusal is `accepted` false, with its class."""
    state = request.app.state
    args = (state.engine, state.settings, task_id, body.to, body.contact, body.service)
    sent = await _call(task_actions.test_send, *args)
    return TestSendOut.model_validate({**vars(sent), "contact": sent.contact_email})


@router.get("/tasks/{task_id}/sub-tasks", response_model=Page[SubTaskOut], responses=ERRORS)
async def get_sub_tasks(
    request: Request,
    task_id: TaskId,
    _: Caller,
    status: SubTaskStatus | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[SubTaskOut]:
    """The task's sub-tasks by id, a page at a time, of one status or all."""
    engine = request.app.state.engine
    rows = await _call(task_actions.sub_tasks, engine, task_id, status, _after(cursor), limit)
    items = [SubTaskOut.model_validate(vars(row)) for row in rows]
    return Page(items=items, next_cursor=next_cursor([item.id for item in items], limit))


@router.get(
    "/tasks/{task_id}/export",
    # A class without a media type, so the errors above stay documented as JSON.
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        200: {
            "description": "the sub-tasks as CSV, one line each after a header line",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
)
async def get_export(
    request: Request,
    task_id: TaskId,
    _: Caller,
    status: Annotated[
        list[SubTaskStatus], Query(max_length=8, description="default: every status")
    ] = [],  # noqa: B006 - FastAPI's idiom
) -> CsvResponse:
    """The task's sub-tasks as CSV (times in UTC), streamed a batch at a time."""
    engine = request.app.state.engine
    lines: Iterator[str] = await _call(task_actions.export_lines, engine, task_id, list(status))
    return CsvResponse(
        lines,
        headers={"Content-Disposition": f'attachment; filename="task-{task_id}.csv"'},
    )


@router.post("/tasks/{task_id}/resend", response_model=ResendOut, responses=ERRORS)
async def post_resend(request: Request, task_id: TaskId, body: ResendIn, _: Caller) -> ResendOut:
    """Send the task's failed and/or unknown sub-tasks again, each as a new attempt with a
    new idempotency key; a completed task runs again. Those of suppressed contacts stay."""
    engine = request.app.state.engine
    resent = await _call(task_actions.resend, engine, task_id, list(body.statuses))
    return ResendOut(resent=resent, task=await _show(request, task_id))
