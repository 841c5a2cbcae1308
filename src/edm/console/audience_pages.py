"""The console's contacts and lists: search, a contact's lists and status, lists made and
deleted, a CSV imported with its progress, contacts exported as CSV.

The CSV goes up as the request's body (a little script in `static/console.js` sends it
and shows the upload's progress; no multipart parser needed), then `imports` runs it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm.api.transfer import UploadTooLarge, csv_download, spool_upload
from edm.audience import lists as lists_mod
from edm.console import auth, imports
from edm.console.view import (
    Submitted,
    admin_form,
    check_admin,
    console_router,
    error_page,
    page,
    redirect,
    render,
)
from edm.contacts import ImportOptions, manage
from edm.db.models import CONTACT_STATUSES
from edm.validation import ID_MAX

router = console_router()
PAGE = "/console/contacts"
CONTACTS_SHOWN = 50
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # as the API's


def _choice(value: str | None, allowed: tuple[str, ...] | list[str]) -> str | None:
    return value if value in allowed else None


@router.get(PAGE, response_class=HTMLResponse)
async def contacts_page(request: Request) -> Response:
    params = request.query_params
    search = params.get("search", "").strip()[:200] or None
    status = _choice(params.get("status"), CONTACT_STATUSES)
    after_text = params.get("after", "")
    after = int(after_text) if after_text.isascii() and after_text.isdigit() else 0
    after = after if after <= ID_MAX else 0

    def load(app: FastAPI) -> dict[str, Any]:
        lists = lists_mod.list_lists(app.state.engine)
        chosen = _choice(params.get("list"), [item.name for item in lists])
        contacts = manage.list_contacts(
            app.state.engine,
            list_name=chosen,
            status=status,
            search=search,
            limit=CONTACTS_SHOWN,
            after_id=after,
        )
        more = contacts[-1].id if len(contacts) == CONTACTS_SHOWN else None
        return {"lists": lists, "contacts": contacts, "more": more, "chosen_list": chosen}

    return await page(
        request,
        "contacts.html",
        load,
        title="Contacts and lists",
        search=search or "",
        chosen_status=status,
        statuses=CONTACT_STATUSES,
    )


@router.get(f"{PAGE}/export.csv")
async def export(request: Request) -> Response:
    if await auth.current_session(request) is None:
        return Response(status_code=401)
    list_name = request.query_params.get("list") or None
    status = _choice(request.query_params.get("status"), CONTACT_STATUSES)
    name = f"contacts-{list_name}.csv" if list_name else "contacts.csv"
    try:
        return await csv_download(
            lambda out: manage.export_contacts(
                request.app.state.engine, out, list_name=list_name, status=status
            ),
            "".join(c if c.isalnum() or c in "-_." else "_" for c in name),
        )
    except ValueError as exc:
        return error_page(400, "Bad request", str(exc))


# -- lists --------------------------------------------------------------------------------
async def _list_change(request: Request, change: Any) -> Response:
    submitted = await admin_form(request)
    if not isinstance(submitted, Submitted):
        return submitted
    try:
        message = await run_in_threadpool(change, request.app.state.engine, submitted)
    except ValueError as exc:
        return await redirect(request, PAGE, str(exc), "error")
    return await redirect(request, PAGE, message)


@router.post("/console/lists/create")
async def create_list(request: Request) -> Response:
    def change(engine: Any, form: Submitted) -> str:
        name = form.get("name").strip()
        lists_mod.create_list(engine, name, form.get("description").strip() or None)
        return f"List {name} made."

    return await _list_change(request, change)


@router.post("/console/lists/delete")
async def delete_list(request: Request) -> Response:
    def change(engine: Any, form: Submitted) -> str:
        name = form.get("name")
        members = lists_mod.delete_list(engine, name)
        return f"List {name} deleted; its {members:,} contact(s) stay."

    return await _list_change(request, change)


# -- import -------------------------------------------------------------------------------
def _fragment(
    job: imports.ImportJob | None, status: int = 200, problem: str | None = None
) -> Response:
    return render("_import.html", status, job=job, problem=problem)


@router.post(f"{PAGE}/import", response_class=HTMLResponse)
async def start_import(request: Request) -> Response:
    """The body is the CSV file; the options are in the query; the CSRF value in the
    X-CSRF-Token header (the body is the file, not a form)."""
    refused = await check_admin(request, request.headers.get("x-csrf-token", ""))
    session = await auth.session_data(request)
    if refused is not None or session is None:
        status = refused.status_code if refused is not None else 403
        return _fragment(None, status, "Sign in again as an admin.")
    params = request.query_params
    file_name = params.get("file", "upload.csv")[:200]
    options = ImportOptions(
        encoding=params.get("encoding", "")[:40] or "utf-8",
        overwrite_empty=params.get("overwrite_empty") == "on",
        allow_reactivate=params.get("allow_reactivate") == "on",
        list_name=params.get("list", "").strip() or None,
    )
    folder = Path(tempfile.mkdtemp(prefix="edm-import-"))
    try:
        await spool_upload(request, folder / "upload.csv", MAX_UPLOAD_BYTES)
    except UploadTooLarge as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return _fragment(None, 413, str(exc))
    job = imports.jobs(request.app).start(
        request.app.state.engine, folder, file_name, options, auth.holder_key(session)
    )
    return _fragment(job, 202)


@router.get("/console/fragments/imports/{job_id}", response_class=HTMLResponse)
async def import_progress(request: Request, job_id: str) -> Response:
    """Answered from the signed cookie alone, reading no database: on SQLite the import
    holds the write lock until it commits. Only the session that started it is told."""
    session = await auth.session_data(request)
    if session is None:
        return Response(status_code=401, headers={"HX-Redirect": "/login?next=/console/contacts"})
    job = imports.jobs(request.app).get(job_id)
    if job is None or job.owner != auth.holder_key(session):
        return _fragment(
            None, 200, "This import is unknown here: it was made on another instance, or long ago."
        )
    return _fragment(job)
