"""The console's events: the log filtered by status (unmatched and errors first of all),
a page at a time, and reprocessing them as `edm events reprocess` does."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm.console.view import Submitted, admin_form, console_router, page, redirect
from edm.events import views
from edm.validation import ID_MAX

router = console_router()
PAGE = "/console/events"
EVENTS_SHOWN = 50


def _before(value: str) -> int:
    return int(value) if value.isascii() and value.isdigit() and int(value) <= ID_MAX else ID_MAX


@router.get(PAGE, response_class=HTMLResponse)
async def events_page(request: Request) -> Response:
    status = request.query_params.get("status") or None
    if status not in (None, *views.LISTED_STATUSES):
        status = None
    before = _before(request.query_params.get("before", ""))

    def load(app: FastAPI) -> dict[str, Any]:
        events = views.list_events(
            app.state.engine, status=status, limit=EVENTS_SHOWN, before=before
        )
        older = events[-1]["id"] if len(events) == EVENTS_SHOWN else None
        return {"events": events, "older": older}

    return await page(
        request,
        "events.html",
        load,
        title="Events",
        chosen=status,
        statuses=views.LISTED_STATUSES,
        reprocessable=views.REPROCESSABLE,
    )


@router.post(f"{PAGE}/reprocess")
async def reprocess(request: Request) -> Response:
    submitted = await admin_form(request)
    if not isinstance(submitted, Submitted):
        return submitted
    status = submitted.get("status") or None
    ids = [int(v) for v in submitted.all("id") if v.isascii() and v.isdigit() and int(v) <= ID_MAX]
    back = f"{PAGE}?status={status}" if status else PAGE
    if status is None and not ids:
        return await redirect(request, back, "Name the events to reprocess.", "error")
    try:
        count, counts = await run_in_threadpool(
            views.reprocess_events, request.app.state.engine, ids, status
        )
    except ValueError as exc:
        return await redirect(request, back, str(exc), "error")
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "nothing to do"
    return await redirect(request, back, f"Reprocessed {count} event(s): {summary}.")
