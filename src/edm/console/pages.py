"""The console's routes: sign-in, the dashboard (and its 5 s fragment), the health page.

Not part of the REST API, so left out of the OpenAPI schema. Every page is rendered with
autoescaping on (task and service names are whatever an operator typed) and sent with a
Content-Security-Policy that allows only our own script and style files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from edm import task_views
from edm.console import auth
from edm.db.models import ACTIVE_SUBTASK_STATUSES, SUBTASK_STATUSES, Task
from edm.health.checks import OK, SEVERITY, CheckResult, worst
from edm.health.repair import history
from edm.services import list_services


class _ConsoleRoute(APIRoute):
    """A console route: a database outage is a page saying so, not the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except DBAPIError:
                return error_page(503, "Database unavailable", "The database cannot be reached.")

        return guarded


router = APIRouter(include_in_schema=False, route_class=_ConsoleRoute)

STATIC_PATH = "/console/static"
REPAIRS_SHOWN = 20
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self';"
    " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Cache-Control": "no-store",  # pages show live data and a CSRF value
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex",
}


def static_files() -> StaticFiles:
    """htmx and the stylesheet, from the installed package (no build step, no CDN)."""
    return StaticFiles(packages=[("edm.console", "static")])


# -- rendering ----------------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pace(interval: float) -> str:
    if interval <= 0:
        return "unpaced"
    return f"1 every {interval:g} s ({3600 / interval:,.0f}/h)"


def _value(value: Any) -> str:
    """A check's value as an operator reads it: `k: v` pairs, not a Python repr."""
    if value is None or value == {} or value == []:
        return "–"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)


@lru_cache(maxsize=1)
def _templates() -> Environment:
    env = Environment(loader=PackageLoader("edm.console", "templates"), autoescape=True)
    env.filters["when"] = _when
    env.filters["pace"] = _pace
    env.filters["value"] = _value
    return env


def render(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def error_page(status: int, title: str, message: str, **values: Any) -> HTMLResponse:
    return render("error.html", status, title=title, message=message, **values)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


# -- what pages show ----------------------------------------------------------------------
def _health(app: FastAPI) -> dict[str, Any]:
    """The banner: the worst status and the checks that are not ok, worst first."""
    results: list[CheckResult] = app.state.health.results()
    problems = sorted((r for r in results if r.status != OK), key=lambda r: -SEVERITY[r.status])
    return {"level": worst(results), "problems": problems, "results": results}


@dataclass(frozen=True)
class RunningTask:
    id: int
    name: str
    priority: int
    started_at: float | None
    counts: list[tuple[str, int]]  # in lifecycle order
    total: int
    done: int  # no longer pending, allocated, sending or unknown

    @property
    def percent(self) -> int:
        return 100 * self.done // self.total if self.total else 0  # 100 only when done


def running_tasks(engine: Engine) -> list[RunningTask]:
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
    return tasks


def _dashboard(app: FastAPI) -> dict[str, Any]:
    engine, settings = app.state.engine, app.state.settings
    return {
        "tasks": running_tasks(engine),
        "services": list_services(engine, heartbeat_max_age=settings.health_heartbeat_seconds),
    }


def _health_page(app: FastAPI) -> dict[str, Any]:
    return {"repairs": history(app.state.engine, REPAIRS_SHOWN)}


async def _page(
    request: Request,
    template: str,
    load: Callable[[FastAPI], dict[str, Any]],
    *,
    fragment: bool = False,
    **values: Any,
) -> Response:
    """A signed-in page: its data and the health banner read off the event loop."""
    session = await auth.current_session(request)
    if session is None:
        if fragment:  # htmx follows a redirect itself: have it load the page instead
            return Response(status_code=401, headers={"HX-Redirect": "/login?next=/"})
        return _to_login(request)
    data = await run_in_threadpool(load, request.app)
    health = await run_in_threadpool(_health, request.app)
    return render(template, session=session, health=health, now=time.time(), **data, **values)


# -- routes -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    return await _page(request, "dashboard.html", _dashboard, title="Dashboard")


@router.get("/console/fragments/dashboard", response_class=HTMLResponse)
async def dashboard_fragment(request: Request) -> Response:
    """The dashboard's body every 5 s, with the banner swapped in out of band."""
    return await _page(request, "_dashboard.html", _dashboard, fragment=True, oob=True)


@router.get("/console/health", response_class=HTMLResponse)
async def health_page(request: Request) -> Response:
    return await _page(request, "health.html", _health_page, title="Health")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    return await _login_form(request, auth.safe_next(request.query_params.get("next")))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = await auth.form(request)
    target = auth.safe_next(fields.get("next"))
    if not await auth.login_csrf_ok(request, fields.get("csrf", "")):
        return await _login_form(request, target, "This form expired: sign in again.")
    token = fields.get("token", "").strip()
    checked = await run_in_threadpool(auth.check_token, request.app.state.engine, token)
    if not token or checked is None:
        return await _login_form(request, target, "Unknown or revoked token.")
    response = RedirectResponse(target, status_code=303)
    await auth.start_session(request, response, *checked)
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
