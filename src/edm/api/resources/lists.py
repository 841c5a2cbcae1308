"""`/api/lists` and `/api/audience/count`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edm.api.access import Caller
from edm.api.errors import ERROR_RESPONSES, ApiError
from edm.audience import lists as lists_mod
from edm.audience.selection import Audience, count_audience

router = APIRouter(prefix="/api", tags=["lists"])
# Names are shown in terminals and pages: no control characters, not blank.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
ERRORS = ERROR_RESPONSES


class ListOut(BaseModel):
    id: int
    name: str
    description: str | None
    members: int
    active: int
    created_at: float


class ListIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    description: str | None = Field(None, max_length=10_000)


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lists: list[str] = Field(default_factory=list, max_length=100)
    exclude: list[str] = Field(default_factory=list, max_length=100)
    where: str | None = Field(None, max_length=4000)


class AudienceCountOut(BaseModel):
    receive: int
    suppressed: int
    where: str | None  # the condition as edm reads it back


def audience_of(body: AudienceIn) -> Audience:
    """The audience of a request; a bad condition is a 400 naming `where`."""
    try:
        return Audience.of(body.lists, body.exclude, body.where)
    except lists_mod.ListInputError as exc:
        field = "exclude" if "--exclude" in str(exc) else "lists"
        raise ApiError(400, "invalid_input", str(exc), field) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_condition", str(exc), "where") from None


@router.get("/lists", response_model=list[ListOut], responses=ERRORS)
async def get_lists(request: Request, _: Caller) -> list[ListOut]:
    views = await run_in_threadpool(lists_mod.list_lists, request.app.state.engine)
    return [ListOut(**vars(view)) for view in views]


@router.post("/lists", response_model=ListOut, status_code=201, responses=ERRORS)
async def post_list(request: Request, body: ListIn, _: Caller) -> ListOut:
    engine = request.app.state.engine
    try:
        await run_in_threadpool(lists_mod.create_list, engine, body.name, body.description)
    except lists_mod.ListExists as exc:
        raise ApiError(409, "conflict", str(exc), "name") from None
    except lists_mod.ListInputError as exc:
        raise ApiError(400, "invalid_input", str(exc), "name") from None
    views = await run_in_threadpool(lists_mod.list_lists, engine)
    return next(ListOut(**vars(v)) for v in views if v.name == body.name.strip())


@router.delete("/lists/{name}", status_code=204, responses=ERRORS)
async def delete_list(request: Request, name: str, _: Caller) -> Response:
    try:
        await run_in_threadpool(lists_mod.delete_list, request.app.state.engine, name)
    except lists_mod.ListNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except lists_mod.ListInUse as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return Response(status_code=204)


@router.get("/audience/count", response_model=AudienceCountOut, responses=ERRORS)
async def get_audience_count(
    request: Request,
    _: Caller,
    lists: Annotated[list[str], Query(max_length=100)] = [],  # noqa: B006 - FastAPI's idiom
    exclude: Annotated[list[str], Query(max_length=100)] = [],  # noqa: B006
    where: Annotated[str | None, Query(max_length=4000)] = None,
) -> AudienceCountOut:
    """How many a task with this audience would send to, before it is created."""
    audience = audience_of(AudienceIn(lists=lists, exclude=exclude, where=where))
    try:
        counted = await run_in_threadpool(count_audience, request.app.state.engine, audience)
    except lists_mod.ListNotFound as exc:
        raise ApiError(400, "invalid_input", str(exc), "lists") from None
    return AudienceCountOut(
        receive=counted.receive, suppressed=counted.suppressed, where=audience.where
    )
