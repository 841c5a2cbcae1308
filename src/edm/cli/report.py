"""`edm report`: sends, delivery rates, pace, errors and webhook lag over a window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

if TYPE_CHECKING:
    from edm.report import Lag, Line, Report


@handles_errors
def report(
    since: Annotated[
        str, typer.Option(help="the window, back from now: a duration such as 24h, 7d or 90m")
    ] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """By service and by task over the window: sends (calls the provider accepted), the
    delivery, open, click, bounce and complaint rates of what was sent, the pace achieved
    against the interval set, errors by class, unknown outcomes, and the webhook lag."""
    from edm import validation
    from edm.report import MAX_SINCE_SECONDS
    from edm.report import report as run_report

    seconds = validation.duration_seconds(since, "--since")
    if seconds > MAX_SINCE_SECONDS:
        raise ValueError(
            f"--since must be at most {MAX_SINCE_SECONDS / 86_400:g} days, not {since!r}"
        )
    found = run_report(engine(), seconds)
    if as_json:
        print_json(found.as_dict())
        return
    _print(found, since)


def _print(found: Report, since: str) -> None:
    from edm.cli.plan import when

    out.print(f"[bold]since {when(found.since, found.now)}[/bold] (the last {escape(since)})")
    lines = [*found.services, found.total]
    out.print(_sending(lines, found.tasks))
    out.print(_outcomes(lines, found.tasks))
    if not found.tasks:
        out.print("tasks: none sent or failed anything in the window")
    out.print(_lag(found.webhook_lag))


def _sending(services: list[Line], tasks: list[Line]) -> Table:
    """Calls, pace and errors: services (and their total), then tasks."""
    table = Table("service / task", "sends", "s/email set", "achieved", "/min", "errors", "unknown")
    table.columns[0].overflow = "fold"
    for i, line in enumerate([*services, *tasks]):
        if i == len(services):
            table.add_section()
        table.add_row(
            escape(_who(line)),
            f"{line.sends:,}",
            "-" if line.interval_seconds is None else f"{line.interval_seconds:g}",
            f"{line.seconds_per_email:.3g}" if line.seconds_per_email else "-",
            f"{line.per_minute:.3g}" if line.per_minute else "-",
            escape(_errors(line)),
            _unknown(line),
        )
    return table


def _outcomes(services: list[Line], tasks: list[Line]) -> Table:
    """What became of the sub-tasks sent in the window, as rates of them."""
    kinds = ("delivered", "opened", "clicked", "bounced", "complained")
    table = Table("service / task", "sent", *kinds)
    table.columns[0].overflow = "fold"
    for i, line in enumerate([*services, *tasks]):
        if i == len(services):
            table.add_section()
        table.add_row(
            escape(_who(line)), f"{line.sent:,}", *(_percent(line.rates[k]) for k in kinds)
        )
    return table


def _unknown(line: Line) -> str:
    if not (line.unknown_outcomes or line.unknown_now):
        return "-"
    return f"{line.unknown_outcomes:,} calls, {line.unknown_now:,} now"


def _who(line: Line) -> str:
    return line.name if line.status is None else f"task {line.id} {line.name}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _errors(line: Line) -> str:
    calls = ", ".join(f"{k} {n:,}" for k, n in sorted(line.errors.items()))
    failed = ", ".join(f"{k} {n:,}" for k, n in sorted(line.failed.items()))
    parts = ([f"calls: {calls}"] if calls else []) + ([f"failed: {failed}"] if failed else [])
    return "; ".join(parts) or "-"


def _lag(lag: Lag) -> str:
    if not lag.events:
        return "webhook lag: no provider event received in the window"
    return (
        f"webhook lag over {lag.events:,} events: median {lag.median_seconds:.3g} s,"
        f" p95 {lag.p95_seconds:.3g} s, most {lag.max_seconds:.3g} s"
    )
