"""`/api/contacts`: search, read, add, change, delete, import (an upload) and export (CSV),
on the same domain modules as `edm contacts`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edm.api.access import Caller
from edm.api.errors import ApiError
from edm.api.pages import Cursor, Limit, Page, after_id, next_cursor
from edm.api.resources.lists import ERRORS
from edm.api.transfer import UploadTooLarge, csv_download, spool_upload
from edm.audience.lists import ListNotFound
from edm.contacts import manage
from edm.db.models import CONTACT_STATUSES

router = APIRouter(prefix="/api", tags=["contacts"])

# An upload is spooled to disk as it arrives: at most this many bytes.
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
# Rejected rows listed in the answer; the counts cover them all.
REJECTIONS_SHOWN = 1000

Email = Annotated[str, Field(min_length=3, max_length=320)]
Status = Annotated[str | None, Query(pattern="^(" + "|".join(CONTACT_STATUSES) + ")$")]


class ContactOut(BaseModel):
    id: int
    email: str
    name: str | None
    status: str
    status_reason: str | None
    created_at: float
    updated_at: float


class ContactDetailOut(ContactOut):
    fields: dict[str, Any]
    lists: list[str]
    sub_tasks: dict[str, int]
    last_sent_at: float | None


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    name: str | None = Field(None, max_length=200)
    fields: dict[str, str] = Field(default_factory=dict)
    lists: list[str] = Field(default_factory=list, max_length=100)


class ContactChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    set_fields: dict[str, str] = Field(default_factory=dict)
    unset_fields: list[str] = Field(default_factory=list, max_length=1000)
    add_lists: list[str] = Field(default_factory=list, max_length=100)
    remove_lists: list[str] = Field(default_factory=list, max_length=100)


class RejectionOut(BaseModel):
    line: int
    reason: str
    value: str


class ImportOut(BaseModel):
    rows: int
    imported: int
    new: int
    updated: int
    unchanged: int
    duplicated: int
    rejected: int
    rejections: list[RejectionOut]  # the first REJECTIONS_SHOWN
    list_made: bool


def _refused(exc: Exception, field: str | None = None) -> ApiError:
    """The domain's refusal as an answer: unknown → 404, taken or busy → 409, else 400."""
    if isinstance(exc, manage.ContactNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, manage.ContactExists | manage.ContactBusy):
        return ApiError(409, "conflict", str(exc), field)
    if isinstance(exc, ListNotFound | manage.ContactListUnknown):
        return ApiError(400, "invalid_input", str(exc), "lists")
    return ApiError(400, "invalid_input", str(exc), field)


def _detail(detail: manage.ContactDetail) -> ContactDetailOut:
    return ContactDetailOut(**{**vars(detail), "lists": list(detail.lists)})


@router.get("/contacts", response_model=Page[ContactOut], responses=ERRORS)
async def get_contacts(
    request: Request,
    _: Caller,
    limit: Limit = 50,
    cursor: Cursor = None,
    list_name: Annotated[str | None, Query(alias="list", max_length=200)] = None,
    status: Status = None,
    search: Annotated[str | None, Query(max_length=320)] = None,
) -> Page[ContactOut]:
    try:
        found = await run_in_threadpool(
            manage.list_contacts,
            request.app.state.engine,
            list_name=list_name,
            status=status,
            search=search,
            limit=limit,
            after_id=after_id(cursor),
        )
    except ValueError as exc:
        raise _refused(exc, "search") from None
    return Page[ContactOut](
        items=[ContactOut(**vars(c)) for c in found],
        next_cursor=next_cursor([c.id for c in found], limit),
    )


@router.post("/contacts", response_model=ContactDetailOut, status_code=201, responses=ERRORS)
async def post_contact(request: Request, body: ContactIn, _: Caller) -> ContactDetailOut:
    engine = request.app.state.engine
    try:
        await run_in_threadpool(
            lambda: manage.add_contact(
                engine, body.email, name=body.name, fields=body.fields, lists=body.lists
            )
        )
        detail = await run_in_threadpool(manage.get_contact, engine, body.email)
    except ValueError as exc:
        raise _refused(exc, "email") from None
    return _detail(detail)


@router.get("/contacts/export", responses={200: {"content": {"text/csv": {}}}, **ERRORS})
async def export_contacts(
    request: Request,
    _: Caller,
    list_name: Annotated[str | None, Query(alias="list", max_length=200)] = None,
    status: Status = None,
) -> StreamingResponse:
    """Every chosen contact as CSV that `edm contacts import` reads back, streamed from a
    file spooled on disk: memory stays flat however many contacts."""
    try:
        return await csv_download(
            lambda out: manage.export_contacts(
                request.app.state.engine, out, list_name=list_name, status=status
            ),
            "contacts.csv",
        )
    except ValueError as exc:
        raise _refused(exc, "list") from None


@router.post(
    "/contacts/import",
    response_model=ImportOut,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def import_contacts(
    request: Request,
    _: Caller,
    list_name: Annotated[str | None, Query(alias="list", max_length=200)] = None,
    overwrite_empty: bool = False,
    allow_reactivate: bool = False,
    encoding: Annotated[
        str, Query(max_length=40, description="the file's: utf-8, latin-1, cp1252, ...")
    ] = "utf-8",
) -> ImportOut:
    """A CSV file as the body (as `edm contacts import` reads one): spooled to disk as it
    arrives, then imported in one transaction; bad rows are listed, the others imported."""
    from edm.contacts import ImportOptions, import_csv

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.csv"
        try:
            await spool_upload(request, path, MAX_UPLOAD_BYTES)
        except UploadTooLarge as exc:
            raise ApiError(413, "too_large", str(exc)) from None
        rejections: list[RejectionOut] = []
        options = ImportOptions(
            encoding=encoding,
            overwrite_empty=overwrite_empty,
            allow_reactivate=allow_reactivate,
            list_name=list_name,
        )

        def keep(rejection: Any) -> None:
            if len(rejections) < REJECTIONS_SHOWN:
                rejections.append(
                    RejectionOut(
                        line=rejection.line, reason=rejection.reason, value=rejection.value
                    )
                )

        try:
            summary = await run_in_threadpool(
                lambda: import_csv(request.app.state.engine, path, options, on_reject=keep)
            )
        except ValueError as exc:
            message = str(exc).replace("--encoding", "the `encoding` parameter")
            field = "encoding" if "encoding" in message else "body"
            raise ApiError(400, "invalid_file", f"{message}; nothing imported", field) from None
    c = summary.counts
    return ImportOut(
        rows=summary.rows,
        imported=summary.imported,
        new=c.new,
        updated=c.updated,
        unchanged=c.unchanged,
        duplicated=c.duplicated,
        rejected=summary.rejected,
        rejections=rejections,
        list_made=summary.list_made,
    )


@router.get("/contacts/{email}", response_model=ContactDetailOut, responses=ERRORS)
async def get_contact(request: Request, email: str, _: Caller) -> ContactDetailOut:
    try:
        detail = await run_in_threadpool(manage.get_contact, request.app.state.engine, email)
    except ValueError as exc:
        raise _refused(exc) from None
    return _detail(detail)


@router.patch("/contacts/{email}", response_model=ContactDetailOut, responses=ERRORS)
async def patch_contact(
    request: Request, email: str, body: ContactChange, _: Caller
) -> ContactDetailOut:
    try:
        detail = await run_in_threadpool(
            lambda: manage.update_contact(
                request.app.state.engine,
                email,
                name=body.name,
                set_fields=body.set_fields,
                unset_fields=body.unset_fields,
                add_lists=body.add_lists,
                remove_lists=body.remove_lists,
            )
        )
    except ValueError as exc:
        raise _refused(exc) from None
    return _detail(detail)


@router.delete("/contacts/{email}", status_code=204, responses=ERRORS)
async def delete_contact(request: Request, email: str, _: Caller) -> Response:
    try:
        await run_in_threadpool(manage.delete_contact, request.app.state.engine, email)
    except ValueError as exc:
        raise _refused(exc) from None
    return Response(status_code=204)
