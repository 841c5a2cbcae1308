"""The console's services: each with its live workers, configured against measured pace,
quota and freeze; add, change, test, freeze and unfreeze, enable and disable.

A service is named in the form, not the path, so any name the CLI accepts can be acted
on. Secrets are never shown (masked as `edm service list` masks them) and never sent
back: an options field sets only the keys typed in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm import services as services_mod
from edm.cli.common import masked
from edm.console.view import (
    Submitted,
    admin_form,
    console_router,
    in_form_words,
    page,
    redirect,
)
from edm.health.diagnose import service_reports
from edm.providers.base import ProviderError
from edm.providers.registry import PROVIDERS
from edm.validation import duration_seconds

router = console_router()
PAGE = "/console/services"
# The CLI's words in the domain's messages, and the fields of these forms that hold them.
FORM_WORDS = (
    ("an --option key", "an option's key"),
    ("--option", "Options"),
    ("--interval", "Seconds between emails"),
    ("--daily-quota", "Daily quota"),
    ("--reason", "the reason"),
    ("--for", "the freeze's length"),
    ("--to", "the test address"),
)


def _services_page(app: FastAPI) -> dict[str, Any]:
    reports = service_reports(app.state.engine, app.state.settings)
    options = {
        view.name: masked(view.options) for view in services_mod.list_services(app.state.engine)
    }
    return {"services": reports, "options": options, "providers": sorted(PROVIDERS)}


@router.get(PAGE, response_class=HTMLResponse)
async def services_page(request: Request) -> Response:
    return await page(request, "services.html", _services_page, title="Services")


# -- changes ------------------------------------------------------------------------------
def _number(text: str, what: str, kind: type = float) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise services_mod.ServiceInputError(f"{what} must be a number, not {text!r}") from None


def _options(text: str) -> dict[str, str]:
    """KEY=VALUE, one per line, as `--option` takes them."""
    pairs = [line for line in text.splitlines() if line.strip()]
    options = services_mod.parse_options(pairs)
    services_mod.check_remote_options(options)
    return options


async def _change(
    request: Request, change: Callable[[FastAPI, Submitted], str], max_fields: int = 20
) -> Response:
    """Apply an admin's change, then back to the services page saying what happened."""
    submitted = await admin_form(request, max_fields=max_fields)
    if not isinstance(submitted, Submitted):
        return submitted
    try:
        message = await run_in_threadpool(change, request.app, submitted)
    except (ValueError, OSError) as exc:
        return await redirect(request, PAGE, in_form_words(str(exc), FORM_WORDS), "error")
    return await redirect(request, PAGE, message)


@router.post(f"{PAGE}/add")
async def add(request: Request) -> Response:
    def change(app: FastAPI, form: Submitted) -> str:
        name = form.get("name").strip()
        services_mod.add_service(
            app.state.engine,
            name,
            form.get("provider"),
            _number(form.get("interval"), "interval") or 0.0,
            _number(form.get("daily_quota"), "daily quota", int),
            _options(form.get("options")),
        )
        return f"Service {name} added: workers pick it up within seconds."

    return await _change(request, change)


@router.post(f"{PAGE}/update")
async def update(request: Request) -> Response:
    def change(app: FastAPI, form: Submitted) -> str:
        name = form.get("name")
        services_mod.update_service(
            app.state.engine,
            name,
            interval=_number(form.get("interval"), "interval"),
            daily_quota=_number(form.get("daily_quota"), "daily quota", int),
            options=_options(form.get("options")),
        )
        return f"Service {name} changed."

    return await _change(request, change)


@router.post(f"{PAGE}/freeze")
async def freeze(request: Request) -> Response:
    def change(app: FastAPI, form: Submitted) -> str:
        name, given = form.get("name"), form.get("for").strip()
        seconds = (
            duration_seconds(given, "--for", error=services_mod.ServiceInputError)
            if given
            else None
        )
        reason = form.get("reason").strip() or None
        services_mod.set_frozen(app.state.engine, name, True, reason, for_seconds=seconds)
        until = f" for {given}" if given else " until it is unfrozen"
        return f"Service {name} frozen{until}: its work goes to the other services."

    return await _change(request, change)


def _switch(path: str, act: Callable[[FastAPI, str], None], said: str) -> None:
    async def route(request: Request) -> Response:
        def change(app: FastAPI, form: Submitted) -> str:
            act(app, form.get("name"))
            return f"Service {form.get('name')} {said}."

        return await _change(request, change)

    router.post(f"{PAGE}/{path}", name=f"console_{path}_service")(route)


_switch(
    "unfreeze", lambda app, name: services_mod.set_frozen(app.state.engine, name, False), "unfrozen"
)
_switch(
    "enable", lambda app, name: services_mod.set_enabled(app.state.engine, name, True), "enabled"
)
_switch(
    "disable", lambda app, name: services_mod.set_enabled(app.state.engine, name, False), "disabled"
)


@router.post(f"{PAGE}/test")
async def test(request: Request) -> Response:
    """One real message through the service, outside any task, as `edm service test`."""

    def change(app: FastAPI, form: Submitted) -> str:
        name, to = form.get("name"), form.get("to").strip()
        try:
            result = services_mod.send_test_message(app.state.engine, name, to, app.state.settings)
        except ProviderError as exc:
            raise ValueError(
                f"{name} refused the test message ({exc.error_class}): {exc}"
            ) from None
        note = " (a repeat of an earlier message)" if result.duplicate else ""
        return f"{name} accepted the test message to {to}{note}: id {result.provider_message_id}."

    return await _change(request, change)
