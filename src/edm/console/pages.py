"""The console's dashboard (and its 5 s fragment), the health page, sign-in and out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm import forecast, task_views
from edm.config import Settings
from edm.console import auth
from edm.console.view import console_router, error_page, page, render
from edm.db.models import ACTIVE_SUBTASK_STATUSES, SUBTASK_STATUSES, Task
from edm.health.diagnose import service_reports
from edm.health.repair import history
from edm.report import report

router = console_router()
REPAIRS_SHOWN = 20


# -- what pages show ----------------------------------------------------------------------
@dataclass(frozen=True)
class RunningTask:
    id: int
    name: str
    priority: int
    started_at: float | None
    counts: list[tuple[str, int]]  # in lifecycle order
    total: int
    done: int  # no longer pending, allocated, sending or unknown
    eta: str | None = None  # when it ends and what cuts it (edm.forecast)

    @property
    def percent(self) -> int:
        return 100 * self.done // self.total if self.total else 0  # 100 only when done


def running_tasks(engine: Engine, settings: Settings) -> list[RunningTask]:
    """Running tasks only: every 5 s per open tab, so the history of finished tasks is
    never counted again (as `task_views.list_tasks` would)."""
    tasks = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(Task.id, Task.name, Task.priority, Task.started_at)
            .where(Task.status == "running")
            .order_by(Task.priority.desc(), Task.id)
        ).all()
        for row in rows:
            counts = task_views.task_counts(conn, row.id)
            total = sum(counts.values())
            left = sum(counts.get(status, 0) for status in ACTIVE_SUBTASK_STATUSES)
            shown = [(status, counts[status]) for status in SUBTASK_STATUSES if counts.get(status)]
            tasks.append(RunningTask(*row, counts=shown, total=total, done=total - left))
    return [replace(task, eta=_eta(engine, settings, task.id)) for task in tasks]


def _eta(engine: Engine, settings: Settings, task_id: int) -> str | None:
    try:
        eta = forecast.task_eta(engine, task_id, settings=settings)
    except task_views.TaskNotFound:  # deleted meanwhile
        return None
    return "; ".join(eta.notes) if eta.notes else eta.reason


def _dashboard(app: FastAPI) -> dict[str, Any]:
    engine, settings = app.state.engine, app.state.settings
    return {
        "tasks": running_tasks(engine, settings),
        "services": service_reports(engine, settings),
    }


def _health_page(app: FastAPI) -> dict[str, Any]:
    return {"repairs": history(app.state.engine, REPAIRS_SHOWN)}


REPORT_WINDOWS = {"1h": 3600.0, "24h": 86_400.0, "7d": 7 * 86_400.0, "30d": 30 * 86_400.0}


# -- routes -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    return await page(request, "dashboard.html", _dashboard, title="Dashboard")


@router.get("/console/fragments/dashboard", response_class=HTMLResponse)
async def dashboard_fragment(request: Request) -> Response:
    """The dashboard's body every 5 s, with the banner swapped in out of band."""
    return await page(request, "_dashboard.html", _dashboard, fragment=True, oob=True)


@router.get("/console/health", response_class=HTMLResponse)
async def health_page(request: Request) -> Response:
    return await page(request, "health.html", _health_page, title="Health")


@router.get("/console/report", response_class=HTMLResponse)
async def report_page(request: Request) -> Response:
    """`edm report` as a page: by service and by task over a window."""
    since = request.query_params.get("since", "24h")
    since = since if since in REPORT_WINDOWS else "24h"

    def load(app: FastAPI) -> dict[str, Any]:
        found = report(app.state.engine, REPORT_WINDOWS[since])
        return {"report": found, "lines": [*found.services, found.total]}

    return await page(
        request, "report.html", load, title="Report", since=since, windows=list(REPORT_WINDOWS)
    )


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return await _login_form(request, auth.safe_next(request.query_params.get("next")))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = await auth.form(request)
    target = auth.safe_next(fields.get("next"))
    if not await auth.login_csrf_ok(request, fields.get("csrf", "")):
        return await _login_form(request, target, "This form expired: sign in again.")
    engine = request.app.state.engine
    token, user = fields.get("token", "").strip(), fields.get("user", "").strip()
    if user:
        holder = await run_in_threadpool(
            auth.check_password, engine, user, fields.get("password", "")
        )
        refused = "Unknown user or wrong password."
    else:
        holder = await run_in_threadpool(auth.check_token, engine, token) if token else None
        refused = "Unknown or revoked token."
    if holder is None:
        return await _login_form(request, target, refused)
    response = RedirectResponse(target, status_code=303)
    await auth.start_session(request, response, holder)
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    """Signing out needs no database: the CSRF value is in the signed cookie itself."""
    fields = await auth.form(request)
    data = await auth.session_data(request)
    if data is not None and not auth.same(str(data.get("csrf", "")), fields.get("csrf", "")):
        return error_page(403, "Forbidden", "This form did not come from this console.")
    response = RedirectResponse("/login", status_code=303)
    auth.end_session(response)
    return response


async def _login_form(request: Request, target: str, error: str | None = None) -> Response:
    csrf, cookie = await auth.login_csrf(request)
    status = 403 if error else 200
    response = render("login.html", status, title="Sign in", next=target, csrf=csrf, error=error)
    if cookie is not None:
        auth.set_login_cookie(request, response, cookie)
    return response
