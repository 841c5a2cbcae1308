"""`edm plan`: how long a campaign would take through some services, before it exists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

if TYPE_CHECKING:
    from edm.forecast import Forecast


@handles_errors
def plan(
    recipients: Annotated[int, typer.Option(min=1, help="how many contacts it would send to")],
    services: Annotated[
        str, typer.Option(help="comma-separated names of the services it would use")
    ],
    start: Annotated[
        str | None,
        typer.Option(help="when it would start: ISO 8601 (no zone: UTC), or 'now' (default)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """How long a campaign to RECIPIENTS contacts through SERVICES would take, at their
    paces and daily quotas, after the running tasks that share them, and on which days
    the quotas cut it."""
    from edm import validation
    from edm.forecast import ForecastInputError
    from edm.forecast import plan as run_plan
    from edm.task_actions import parse_time

    names = validation.service_names(services, "--services", error=ForecastInputError)
    at = None if start is None or start.strip().lower() == "now" else parse_time(start, "--start")
    found = run_plan(engine(), recipients, names, at)
    if as_json:
        print_json(found.as_dict())
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("recipients", f"{found.recipients:,}")
    grid.add_row("starts", when(found.starts_at, found.now))
    grid.add_row("ends", _ends(found))
    if found.duration_seconds is not None:
        grid.add_row("takes", span(found.duration_seconds))
    out.print(grid)
    print_forecast(found)


def print_forecast(found: Forecast) -> None:
    """The services' shares, the days, and the notes: what a plan and an ETA show alike."""
    if found.services:
        out.print(_services_table(found))
    if len(found.days) > 1 or any(day.quota_reached for day in found.days):
        days = Table("day (UTC)", "sent", "daily quota reached by")
        for day in found.days:
            days.add_row(day.date, f"{day.sent:,}", escape(", ".join(day.quota_reached)) or "-")
        out.print(days)
    for note in found.notes:
        out.print(f"  {escape(note)}", soft_wrap=True)


def _services_table(found: Forecast) -> Table:
    table = Table("service", "s/email", "quota left", "share", "starts", "quota reached")
    table.columns[0].overflow = "fold"  # a name is never cut
    for s in found.services:
        if not s.counted:
            table.add_row(escape(s.name), "-", "-", "not counted", "-", "-")
            continue
        quota = "no limit" if s.daily_quota is None else f"{s.quota_left:,}/{s.daily_quota:,}"
        pace = f"{s.seconds_per_email:.3g}" + (
            "" if s.pace_from == "interval" else f" {s.pace_from}"
        )
        table.add_row(
            escape(s.name),
            pace,
            quota,
            f"{s.share:,}",
            when(s.starts_at, found.now),
            _reached(s.quota_reached, found.now),
        )
    return table


def _reached(times: list[float], now: float) -> str:
    if not times:
        return "-"
    more = f" (+{len(times) - 1} days)" if len(times) > 1 else ""
    return when(times[0], now) + more


def _ends(found: Forecast) -> str:
    if found.ends_at is None:
        return f"[red]unknown[/red]: {escape(found.reason or '')}"
    return when(found.ends_at, found.now)


def when(epoch: float | None, now: float) -> str:
    """A time in UTC; only the hour when it is the same day as `now`."""
    if epoch is None:
        return "-"
    moment = datetime.fromtimestamp(epoch, UTC)
    if moment.date() == datetime.fromtimestamp(now, UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
