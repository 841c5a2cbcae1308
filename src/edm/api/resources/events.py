"""`/api/events`: the event log as `edm events list` shows it, its reprocessing, and
`/api/health` (GET /health behind a token).

The log is paged newest first, as the CLI lists it: each page's `next_cursor` is its last
(lowest) id and the next page holds the ids below it, so events arriving meanwhile never
shift a walk already under way (they are on the first page, for the next walk).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from edm.api import health
from edm.api.access import Caller
from edm.api.errors import ApiError, ErrorBody
from edm.api.pages import Cursor, Limit, Page, after_id, next_cursor
from edm.api.resources.services import json_number
from edm.events import views
from edm.validation import ID_MAX

router = APIRouter(prefix="/api", tags=["events"])
ERRORS = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}

ListedStatus = Literal[views.LISTED_STATUSES]
ReprocessStatus = Literal[views.REPROCESSABLE]
# The highest id a request may name (JSON's largest safe integer): the OpenAPI schema
# states bounds as floats, and a client comparing a larger id as a float would round it
# onto the bound and take it for valid.
ID_BOUND = 2**53 - 1
EventId = Annotated[int, Field(ge=1, le=ID_BOUND), BeforeValidator(json_number)]


class EventOut(BaseModel):
    id: int = Field(description="the event's; for status `invalid`, the request's")
    provider: str
    event: str = Field(description="delivered, opened, ...; `request` for an invalid request")
    status: str
    occurred_at: float
    created_at: float
    sub_task_id: int | None
    task_id: int | None
    matched_by: str | None
    duplicates: int = Field(description="how many times it was received again")
    recipient: str | None
    error: str | None


class ReprocessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[EventId] = Field(default_factory=list, max_length=10_000)
    status: ReprocessStatus | None = Field(None, description="every event in this status")


class ReprocessOut(BaseModel):
    reprocessed: int = Field(description="events named, by id and by status")
    statuses: dict[str, int] = Field(
        description="what became of them; `skipped`: not waiting, or no such event"
    )


def before_id(cursor: str | None) -> int:
    """The ids a page may hold are below this: the cursor, else beyond every id."""
    if not cursor:
        return ID_MAX
    try:
        before = after_id(cursor)
    except ValueError:  # digits that int() does not read, such as "²"
        before = -1
    if not 0 <= before <= ID_MAX:
        raise ApiError(400, "invalid_request", "not a cursor this server gave", "cursor")
    return before


def event_page(
    engine: Engine, status: str | None, task_id: int | None, before: int, limit: int
) -> list[EventOut]:
    rows = views.list_events(engine, task_id=task_id, status=status, limit=limit, before=before)
    return [EventOut(**row) for row in rows]


def reprocess(engine: Engine, ids: list[int], status: str | None) -> ReprocessOut:
    """What `edm events reprocess` does; an id named twice is reprocessed once."""
    count, statuses = views.reprocess_events(engine, ids, status)
    return ReprocessOut(reprocessed=count, statuses=statuses)


@router.get("/events", response_model=Page[EventOut], responses=ERRORS)
async def get_events(
    request: Request,
    _: Caller,
    status: Annotated[ListedStatus | None, Query(description="`invalid`: requests")] = None,
    task_id: Annotated[int | None, Query(ge=1, le=ID_BOUND)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[EventOut]:
    """The event log, newest first, with what each event was matched to or why not."""
    before = before_id(cursor)
    items = await run_in_threadpool(
        event_page, request.app.state.engine, status, task_id, before, limit
    )
    return Page(items=items, next_cursor=next_cursor([item.id for item in items], limit))


@router.post("/events/reprocess", response_model=ReprocessOut, responses=ERRORS)
async def post_reprocess(request: Request, body: ReprocessIn, _: Caller) -> ReprocessOut:
    """Match and apply events again: after a fix, or once the sub-task they name exists."""
    if not body.ids and body.status is None:
        raise ApiError(400, "invalid_request", "name the events: ids, status or both", "ids")
    return await run_in_threadpool(reprocess, request.app.state.engine, body.ids, body.status)


@router.get(
    "/health",
    response_model=health.Health,
    responses={
        401: {"model": ErrorBody},
        503: {"model": health.Health, "description": "a check is critical"},
    },
    tags=["health"],
)
async def get_health(request: Request, _: Caller) -> JSONResponse:
    """GET /health, for API clients: every check; 200 unless one is critical (then 503)."""
    return await health.checks(request)
