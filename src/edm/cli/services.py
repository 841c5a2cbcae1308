"""`edm service`: sending services."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edm.cli.common import engine, fail, handles_errors, masked, out, print_json

app = typer.Typer(no_args_is_help=True, help="Sending services: add, change, test, freeze.")


@app.command("add")
@handles_errors
def service_add(
    name: str,
    provider: Annotated[str, typer.Option(help="sandbox, smtp or engagelab")],
    interval: Annotated[float, typer.Option(help="seconds between two sends; 0: no pace")],
    daily_quota: Annotated[int | None, typer.Option(help="sends per UTC day")] = None,
    option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the provider")] = None,
) -> None:
    """Add a sending service; running workers pick it up within seconds."""
    from edm import services as services_mod

    options = services_mod.parse_options(option or [])
    service_id = services_mod.add_service(engine(), name, provider, interval, daily_quota, options)
    out.print(f"service {name} added (id {service_id})")


@app.command("update")
@handles_errors
def service_update(
    name: str,
    interval: Annotated[float | None, typer.Option(help="seconds between two sends")] = None,
    daily_quota: Annotated[int | None, typer.Option(help="sends per UTC day")] = None,
    option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE to set")] = None,
) -> None:
    """Change a service's pace, quota or options; running workers follow without a restart."""
    from edm import services as services_mod

    options = services_mod.parse_options(option or [])
    services_mod.update_service(
        engine(), name, interval=interval, daily_quota=daily_quota, options=options
    )
    out.print(f"service {name} updated")


@app.command("test")
@handles_errors
def service_test(
    name: str, to: Annotated[str, typer.Option(help="where to send the test message")]
) -> None:
    """Send one real message through a service and show the provider's answer."""
    from edm import services as services_mod
    from edm.config import get_settings
    from edm.providers.base import ProviderError

    try:
        result = services_mod.send_test_message(engine(), name, to, get_settings())
    except ProviderError as exc:
        code = f" (code {exc.code})" if exc.code else ""
        fail(f"{name} answered with a {exc.error_class} error{code}: {exc}")
        return
    note = " (a repeat of an earlier message)" if result.duplicate else ""
    out.print(f"{name} accepted the message{note}: {result.provider_message_id}")


@app.command("list")
@handles_errors
def service_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Services with their pace, quota, state and live workers."""
    from edm import services as services_mod

    views = services_mod.list_services(engine())
    if as_json:
        print_json([{**vars(v), "options": masked(v.options)} for v in views])
        return
    table = Table(
        "id", "name", "provider", "interval", "quota today", "state", "workers", "last error"
    )
    for v in views:
        state = (
            "disabled"
            if not v.enabled
            else ("frozen: " + (v.frozen_reason or "") if v.frozen else "active")
        )
        quota = (
            f"{v.quota_used_today}/{v.daily_quota}"
            if v.daily_quota is not None
            else (f"{v.quota_used_today}")
        )
        table.add_row(
            str(v.id),
            v.name,
            v.provider,
            f"{v.interval_seconds:g}s",
            quota,
            state,
            str(v.workers_alive),
            v.last_error or "",
        )
    out.print(table)


@app.command("freeze")
@handles_errors
def service_freeze(
    name: str, reason: Annotated[str | None, typer.Option(help="shown with the service")] = None
) -> None:
    """Stop sending through a service; its work goes to the others."""
    from edm import services as services_mod

    services_mod.set_frozen(engine(), name, True, reason)
    out.print(f"service {name} frozen")


@app.command("unfreeze")
@handles_errors
def service_unfreeze(name: str) -> None:
    """Send through a frozen service again."""
    from edm import services as services_mod

    services_mod.set_frozen(engine(), name, False)
    out.print(f"service {name} unfrozen")


@app.command("enable")
@handles_errors
def service_enable(name: str) -> None:
    """Use a disabled service again."""
    from edm import services as services_mod

    services_mod.set_enabled(engine(), name, True)
    out.print(f"service {name} enabled")


@app.command("disable")
@handles_errors
def service_disable(name: str) -> None:
    """Stop using a service, without the alarm of a freeze."""
    from edm import services as services_mod

    services_mod.set_enabled(engine(), name, False)
    out.print(f"service {name} disabled")
