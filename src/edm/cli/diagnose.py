"""`edm diagnose`: why a task is not finishing, and the commands that fix it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

if TYPE_CHECKING:
    from edm.health.diagnose import Diagnosis, EventsReport, ServiceReport, TaskReport

COLOURS = {"ok": "green", "info": "cyan", "warn": "yellow", "critical": "red"}


@handles_errors
def diagnose(
    task_id: Annotated[int | None, typer.Argument(metavar="[TASK_ID]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Why task TASK_ID is not finishing: its progress, sub-tasks, services, events, the
    failing health checks and a verdict with the commands that fix it. Without TASK_ID:
    every running, paused or due task and every service."""
    from edm import validation
    from edm.config import get_settings
    from edm.health.diagnose import diagnose as run_diagnose
    from edm.task_views import TaskNotFound

    if task_id is not None:
        validation.record_id(task_id, "task", error=TaskNotFound)
    found = run_diagnose(engine(), get_settings(), task_id)
    if as_json:
        print_json(found.as_dict())
        return
    _print(found)


def _print(found: Diagnosis) -> None:
    if found.scope == "task":
        out.print(_task_grid(found.tasks[0], found.now))
        out.print(_status_table(found.tasks[0], found.now))
    else:
        out.print(_tasks_table(found.tasks) if found.tasks else "tasks: none running or paused")
    out.print(_services_table(found.services, found.now) if found.services else "services: none")
    out.print(_events_grid(found.events, found.now))
    if found.failing_checks:
        checks = Table("failing check", "status", "what it says", title=None)
        for check in found.failing_checks:
            checks.add_row(check.name, _coloured(check.status), escape(check.message))
        out.print(checks)
    else:
        out.print("health checks: all ok")
    _print_verdict(found)


def _task_grid(task: TaskReport, now: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = task.status + (f" ({escape(task.status_reason)})" if task.status_reason else "")
    grid.add_row("task", f"{task.id} {escape(task.name)}")
    grid.add_row("status", status)
    grid.add_row("created", _when(task.created_at))
    grid.add_row("started", _when(task.started_at or task.scheduled_at))
    grid.add_row("delivery", f"{task.delivery_policy}, priority {task.priority}")
    grid.add_row("services", escape(", ".join(task.services)) or "none")
    p = task.progress
    grid.add_row("progress", f"{p.done:,}/{p.total:,} done ({p.percent:g}%)")
    f = task.funnel
    grid.add_row(
        "funnel",
        f"sent {f['sent']:,} → delivered {f['delivered']:,} → opened {f['opened']:,} →"
        f" clicked {f['clicked']:,}; bounced {f['bounced']:,}, complained"
        f" {f['complained']:,}, unsubscribed {f['unsubscribed']:,}",
    )
    if task.rate_per_minute:
        left = f", about {task.minutes_left:.0f} min left" if task.minutes_left else ""
        grid.add_row("pace", f"{task.rate_per_minute:g}/min{left}")
    return grid


def _status_table(task: TaskReport, now: float) -> Table:
    table = Table("sub-tasks", "count", "oldest", "since")
    for age in task.sub_tasks:
        table.add_row(
            age.status,
            f"{age.count:,}",
            f"#{age.oldest_id}" if age.oldest_id is not None else "-",
            _age(age.oldest_age_seconds),
        )
    return table


def _tasks_table(tasks: list[TaskReport]) -> Table:
    table = Table("task", "name", "status", "progress", "left", "pace")
    for task in tasks:
        left = sum(a.count for a in task.sub_tasks if a.status in ("pending", "allocated"))
        pace = f"{task.rate_per_minute:g}/min" if task.rate_per_minute else "-"
        table.add_row(
            str(task.id),
            escape(task.name),
            task.status,
            f"{task.progress.done:,}/{task.progress.total:,} ({task.progress.percent:g}%)",
            f"{left:,}",
            pace,
        )
    return table


def _services_table(services: list[ServiceReport], now: float) -> Table:
    errors = any(s.last_error for s in services)
    table = Table("service", "state", "workers", "s/email set, measured", "quota left", "share")
    if errors:
        table.add_column("last error")
    for s in services:
        measured = f"{s.measured_seconds_per_email:.3g}" if s.measured_seconds_per_email else "-"
        row = [
            escape(s.name),
            escape(_state(s, now)),
            str(s.live_workers) if s.live_workers else "[red]none live[/red]",
            f"{s.interval_seconds:g}, {measured}",
            _quota(s, now),
            f"sent {s.sent:,}, pinned {s.pinned_pending:,}",
        ]
        table.add_row(*row, *([escape(s.last_error or "")] if errors else []))
    return table


def _state(service: ServiceReport, now: float) -> str:
    if not service.enabled:
        return "disabled"
    if service.frozen:
        since = f" since {_when(service.frozen_at, now)}" if service.frozen_at else ""
        return f"frozen{since}: {service.frozen_reason or 'no reason'}"
    if service.paused_until:
        return f"paused by its provider until {_when(service.paused_until, now)}"
    return "active"


def _quota(service: ServiceReport, now: float) -> str:
    if service.daily_quota is None:
        return "no limit"
    resets = _when(service.quota_resets_at, now)
    return f"{service.quota_left:,}/{service.daily_quota:,}, resets {resets}"


def _events_grid(events: EventsReport, now: float) -> str:
    scope = "events" if events.since is None else f"events since {_when(events.since, now)}"
    if not events.counts:
        return f"{scope}: none"
    counts = ", ".join(f"{c.event} {c.status} {c.count:,}" for c in events.counts)
    last = events.last
    tail = (
        f"; the last: {last.event} ({last.status}) received {_when(last.received_at, now)}"
        if last
        else ""
    )
    return f"{scope}: {escape(counts)}{escape(tail)}"


def _print_verdict(found: Diagnosis) -> None:
    out.print("[bold]verdict[/bold]" + (": [green]nothing is wrong[/green]" if found.ok else ""))
    for finding in found.verdict:
        out.print(f"  {_coloured(finding.severity)}  {escape(finding.message)}", soft_wrap=True)
        for command in finding.commands:
            out.print(f"      $ {escape(command)}", highlight=False)


def _coloured(status: str) -> str:
    colour = COLOURS.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def _when(epoch: float | None, now: float | None = None) -> str:
    """A time in UTC; only the hour when it is the same day as `now`."""
    if epoch is None:
        return "-"
    moment = datetime.fromtimestamp(epoch, UTC)
    if now is not None and moment.date() == datetime.fromtimestamp(now, UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return f"due in {_age(-seconds)}"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
