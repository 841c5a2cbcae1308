"""What every console page shares: rendering, security headers, the signed-in page with
its health banner, and the checks an admin's form passes before it changes anything.

Every page is rendered with autoescaping on (task and service names are whatever an
operator typed) and sent with a Content-Security-Policy that allows only our own script
and style files.
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
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from edm.console import auth
from edm.health.checks import OK, SEVERITY, CheckResult, worst


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


def console_router() -> APIRouter:
    """A router of console pages: left out of the API's schema, outages shown as a page."""
    return APIRouter(include_in_schema=False, route_class=_ConsoleRoute)


STATIC_PATH = "/console/static"
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


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def _health(app: FastAPI) -> dict[str, Any]:
    """The banner: the worst status and the checks that are not ok, worst first."""
    results: list[CheckResult] = app.state.health.recent()
    problems = sorted((r for r in results if r.status != OK), key=lambda r: -SEVERITY[r.status])
    return {"level": worst(results), "problems": problems, "results": results}


async def page(
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
        return to_login(request)
    data = await run_in_threadpool(load, request.app)
    health = await run_in_threadpool(_health, request.app)
    message = await _take_flash(request)
    response = render(
        template,
        session=session,
        health=health,
        now=time.time(),
        flash=message,
        **data,
        **values,
    )
    if message is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


# -- forms that change something ----------------------------------------------------------
@dataclass(frozen=True)
class Submitted:
    """An admin's form that passed the checks: who sent it and its fields."""

    session: auth.Session
    values: dict[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        given = self.values.get(name)
        return given[0] if given else default

    def all(self, name: str) -> list[str]:
        return [value for value in self.values.get(name, []) if value]


async def admin_form(
    request: Request, max_bytes: int = auth.MAX_FORM_BYTES, max_fields: int = auth.MAX_FORM_FIELDS
) -> Submitted | Response:
    """The form, or the answer to give instead (see `check_admin`)."""
    session = await auth.current_session(request)
    if session is None:
        return to_login(request)
    values = await auth.form_values(request, max_bytes, max_fields)
    refused = _refusal(session, values.get("csrf", [""])[0])
    return refused if refused is not None else Submitted(session, values)


async def check_admin(request: Request, csrf: str) -> Response | None:
    """None when an admin's session sent this with its CSRF value; else the answer: sign
    in first; 403 for a request that did not come from one of our pages or for a read
    token, which can look but not change."""
    session = await auth.current_session(request)
    if session is None:
        return to_login(request)
    return _refusal(session, csrf)


def _refusal(session: auth.Session, csrf: str) -> Response | None:
    if not auth.same(session.csrf, csrf):
        return error_page(
            403, "Forbidden", "This form did not come from this console: reload the page."
        )
    if session.role != "admin":
        return error_page(
            403, "Forbidden", "A read token can look but not change: sign in with an admin token."
        )
    return None


def in_form_words(message: str, words: tuple[tuple[str, str], ...]) -> str:
    """A domain message (worded for the CLI: `--interval must be ...`) in the words of the
    form that was sent: each CLI option replaced by the label of its field."""
    for cli, label in words:
        message = message.replace(cli, label)
    return message


# -- one message after a redirect ---------------------------------------------------------
FLASH_COOKIE = "edm_flash"
FLASH_SECONDS = 60


@dataclass(frozen=True)
class Flash:
    level: str  # ok | error
    text: str


async def redirect(request: Request, to: str, text: str, level: str = "ok") -> Response:
    """Back to a page after a form, with one message to show there (signed: a link cannot
    put words in the console's mouth), and the health checks run afresh for it."""
    request.app.state.health.changed()  # the page it goes to shows the checks as they are now
    response = RedirectResponse(to, status_code=303)
    data = {"level": level, "text": text[:500], "exp": int(time.time()) + FLASH_SECONDS}
    value = auth.sign(await auth.signing_key(request), "flash", data)
    auth.set_cookie(response, request, FLASH_COOKIE, value, FLASH_SECONDS)
    return response


async def _take_flash(request: Request) -> Flash | None:
    if FLASH_COOKIE not in request.cookies:
        return None
    data = auth.unsign(await auth.signing_key(request), "flash", request.cookies[FLASH_COOKIE])
    if data is None or data.get("level") not in ("ok", "error"):
        return None
    return Flash(str(data["level"]), str(data.get("text", "")))
