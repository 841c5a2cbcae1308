"""`/api/report`, `/api/plan` and `/api/tasks/{task_id}/eta`: what was sent over a window,
how long a campaign would take, and when a task's last sub-task will be sent. The rules are
those of `edm report` and `edm plan` (`edm.report`, `edm.forecast`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edm import validation
from edm.api.access import Caller
from edm.api.errors import ApiError
from edm.api.resources.lists import ERRORS
from edm.forecast import ForecastInputError, task_eta
from edm.forecast import plan as run_plan
from edm.report import MAX_SINCE_SECONDS, ReportInputError
from edm.report import report as run_report
from edm.task_actions import TaskActionError, parse_time
from edm.task_views import TaskNotFound

router = APIRouter(prefix="/api", tags=["report"])


# -- answers ---------------------------------------------------------------------------------------
class LineOut(BaseModel):
    """One service or one task over the window; `id` null: every service together."""

    id: int | None
    name: str
    status: str | None  # a task's
    calls: int
    sends: int  # calls the provider accepted
    sent: int  # sub-tasks sent in the window: the rates are of these
    facts: dict[str, int]
    rates: dict[str, float | None]
    seconds_per_email: float | None  # achieved, first to last accepted call
    per_minute: float | None
    interval_seconds: float | None  # configured, a service's
    errors: dict[str, int]  # calls by outcome other than sent
    failed: dict[str, int]  # sub-tasks failed in the window, by error class
    unknown_outcomes: int
    unknown_now: int
    first_send: float | None
    last_send: float | None


class LagOut(BaseModel):
    events: int
    median_seconds: float | None
    p95_seconds: float | None
    max_seconds: float | None


class ReportOut(BaseModel):
    now: float
    since: float
    window_seconds: float
    services: list[LineOut]
    tasks: list[LineOut]
    total: LineOut
    webhook_lag: LagOut


class ServiceShareOut(BaseModel):
    name: str
    counted: bool
    why_not: str | None
    share: int
    seconds_per_email: float | None
    pace_from: str | None  # interval | measured | assumed
    daily_quota: int | None
    quota_left: int | None
    opens_at: float | None
    starts_at: float | None
    quota_reached: list[float]
    serves_first: list[int]
    live_worker: bool


class DayOut(BaseModel):
    date: str
    sent: int
    quota_reached: list[str]


class ForecastOut(BaseModel):
    now: float
    starts_at: float
    remaining: int
    held: int
    ends_at: float | None
    seconds_left: float | None
    reason: str | None  # why ends_at is null
    services: list[ServiceShareOut]
    days: list[DayOut]
    notes: list[str]


class EtaOut(ForecastOut):
    task_id: int
    name: str
    status: str


class PlanOut(ForecastOut):
    recipients: int
    duration_seconds: float | None


# -- operations ------------------------------------------------------------------------------------
@router.get("/report", response_model=ReportOut, responses=ERRORS)
async def get_report(
    request: Request,
    _: Caller,
    since_seconds: Annotated[
        float, Query(gt=0, le=MAX_SINCE_SECONDS, description="the window, back from now")
    ] = 86_400.0,
) -> ReportOut:
    """By service and by task over the window: sends, rates, pace, errors, webhook lag."""
    try:
        found = await run_in_threadpool(run_report, request.app.state.engine, since_seconds)
    except ReportInputError as exc:
        raise ApiError(400, "invalid_input", str(exc), "since_seconds") from None
    return ReportOut.model_validate(found.as_dict())


@router.get("/plan", response_model=PlanOut, responses=ERRORS)
async def get_plan(
    request: Request,
    _: Caller,
    recipients: Annotated[int, Query(ge=1, le=validation.INT32_MAX)],
    services: Annotated[
        list[str],
        Query(max_length=100, description="service names, repeated or comma-separated; none: all"),
    ] = [],  # noqa: B006 - FastAPI's idiom
    start: Annotated[
        str | None, Query(max_length=100, description="ISO 8601 (no zone: UTC) or `now`")
    ] = None,
) -> PlanOut:
    """How long a campaign would take, and on which days the daily quotas cut it."""
    names = [name for value in services for name in value.split(",")]
    engine = request.app.state.engine
    try:
        at = None if start is None or start.strip().lower() == "now" else parse_time(start, "start")
        found = await run_in_threadpool(
            run_plan, engine, recipients, names, at, settings=request.app.state.settings
        )
    except (ForecastInputError, TaskActionError) as exc:
        raise ApiError(400, "invalid_input", str(exc), exc.field) from None
    return PlanOut.model_validate(found.as_dict())


@router.get("/tasks/{task_id}/eta", response_model=EtaOut, responses=ERRORS)
async def get_task_eta(
    request: Request,
    _: Caller,
    task_id: Annotated[int, Path(ge=1, le=validation.ID_MAX, description="the task's id")],
) -> EtaOut:
    """When the task's last sub-task will be sent, each service's share, and why."""
    try:
        found = await run_in_threadpool(
            task_eta, request.app.state.engine, task_id, settings=request.app.state.settings
        )
    except TaskNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return EtaOut.model_validate(found.as_dict())
