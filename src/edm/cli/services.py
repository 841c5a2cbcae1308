"""`edm service`: sending services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, fail, handles_errors, masked, out, print_json

app = typer.Typer(no_args_is_help=True, help="Sending services: add, change, test, freeze.")

# The keys of edm.providers.registry.PROVIDERS, written out: importing the registry imports
# every provider's HTTP and SMTP client, and `edm --help` must answer at once. A test
# checks that the two agree.
PROVIDER_NAMES = ("sandbox", "smtp", "engagelab")

Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.command("add")
@handles_errors
def service_add(
    name: str,
    provider: Annotated[str, typer.Option(help=f"one of: {', '.join(PROVIDER_NAMES)}")],
    interval: Annotated[
        float, typer.Option(help="seconds between two sends, 0 to 86400; 0: no pace")
    ],
    daily_quota: Annotated[
        int | None, typer.Option(help="sends per UTC day, 0 to 2147483647; default: no limit")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the provider; may be repeated")
    ] = None,
) -> None:
    """Add a sending service; running workers pick it up within seconds.

    NAME: at most 200 characters, no control characters.
    """
    from edm import services as services_mod

    options = services_mod.parse_options(option or [])
    service_id = services_mod.add_service(engine(), name, provider, interval, daily_quota, options)
    out.print(f"service {escape(name.strip())} added (id {service_id})")


@app.command("update")
@handles_errors
def service_update(
    name: str,
    interval: Annotated[
        float | None, typer.Option(help="seconds between two sends, 0 to 86400")
    ] = None,
    daily_quota: Annotated[
        int | None, typer.Option(help="sends per UTC day, 0 to 2147483647")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE to set; may be repeated")
    ] = None,
) -> None:
    """Change service NAME's pace, quota or options; workers follow without a restart."""
    from edm import services as services_mod

    options = services_mod.parse_options(option or [])
    services_mod.update_service(
        engine(), name, interval=interval, daily_quota=daily_quota, options=options
    )
    out.print(f"service {escape(name)} updated")


@app.command("test")
@handles_errors
def service_test(
    name: str, to: Annotated[str, typer.Option(help="where to send the test message")]
) -> None:
    """Send one real message through service NAME and show the provider's answer."""
    from edm import services as services_mod
    from edm.config import get_settings
    from edm.providers.base import ProviderError

    try:
        result = services_mod.send_test_message(engine(), name, to, get_settings())
    except ProviderError as exc:
        code = f" (code {exc.code})" if exc.code else ""
        fail(escape(f"{name} answered with a {exc.error_class} error{code}: {exc}"))
        return
    note = " (a repeat of an earlier message)" if result.duplicate else ""
    out.print(escape(f"{name} accepted the message{note}: {result.provider_message_id}"))


@app.command("list")
@handles_errors
def service_list(as_json: Json = False) -> None:
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
        if v.frozen and v.frozen_until:
            until = datetime.fromtimestamp(v.frozen_until, UTC).strftime("%Y-%m-%d %H:%M UTC")
            state += f" (until {until})"
        quota = (
            f"{v.quota_used_today}/{v.daily_quota}"
            if v.daily_quota is not None
            else (f"{v.quota_used_today}")
        )
        table.add_row(
            str(v.id),
            escape(v.name),
            v.provider,
            f"{v.interval_seconds:g}s",
            quota,
            escape(state),
            str(v.workers_alive),
            escape(v.last_error or ""),
        )
    out.print(table)


@app.command("freeze")
@handles_errors
def service_freeze(
    name: str,
    reason: Annotated[str | None, typer.Option(help="why; shown with the service")] = None,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for", help="unfreeze by itself after this long: 30m, 2h, 1d; default: never"
        ),
    ] = None,
) -> None:
    """Stop sending through service NAME; its work goes to the others."""
    from edm import services as services_mod
    from edm.validation import duration_seconds

    seconds = (
        duration_seconds(for_, "--for", error=services_mod.ServiceInputError) if for_ else None
    )
    services_mod.set_frozen(engine(), name, True, reason, for_seconds=seconds)
    until = f" for {for_} (the repair loop of a running instance unfreezes it)" if for_ else ""
    out.print(f"service {escape(name)} frozen{escape(until)}")


@app.command("unfreeze")
@handles_errors
def service_unfreeze(name: str) -> None:
    """Send through frozen service NAME again."""
    from edm import services as services_mod

    services_mod.set_frozen(engine(), name, False)
    out.print(f"service {escape(name)} unfrozen")


@app.command("enable")
@handles_errors
def service_enable(name: str) -> None:
    """Use disabled service NAME again."""
    from edm import services as services_mod

    services_mod.set_enabled(engine(), name, True)
    out.print(f"service {escape(name)} enabled")


@app.command("disable")
@handles_errors
def service_disable(name: str) -> None:
    """Stop using service NAME, without the alarm of a freeze."""
    from edm import services as services_mod

    services_mod.set_enabled(engine(), name, False)
    out.print(f"service {escape(name)} disabled")
