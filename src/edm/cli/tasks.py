"""`edm task`: campaigns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, fail, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Campaign tasks: create, follow, pause, cancel.")

# The docstrings describe the arguments: click 8.5 drops the help that typer 0.24 gives
# an argument.
TaskId = Annotated[int, typer.Argument(metavar="TASK_ID")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


def parse_time(value: str) -> float:
    """An ISO 8601 time as epoch seconds; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):  # OverflowError: a zone pushes it past year 1..9999
        raise ValueError(
            f"--at must be an ISO 8601 time such as 2026-12-01T09:00Z, or 'now', not {value!r}"
        ) from None


@app.command("create")
@handles_errors
def task_create(
    name: str,
    subject: Annotated[str, typer.Option(help="subject template")],
    html: Annotated[Path | None, typer.Option(help="HTML template file")] = None,
    text: Annotated[str | None, typer.Option(help="text template")] = None,
    from_addr: Annotated[
        str | None,
        typer.Option(
            "--from", help="sender, 'Name <news@example.com>' or an address; default: the service's"
        ),
    ] = None,
    services: Annotated[
        str | None, typer.Option(help="comma-separated service names; default: every service")
    ] = None,
    priority: Annotated[
        int, typer.Option(help="higher is sent first; -2147483648 to 2147483647")
    ] = 0,
    delivery: Annotated[str, typer.Option(help="at_most_once | at_least_once")] = "at_most_once",
    start: Annotated[bool, typer.Option("--start", help="start sending at once")] = False,
    at: Annotated[
        str | None,
        typer.Option(
            help="start at this time (ISO 8601, e.g. 2026-12-01T09:00Z; no zone: UTC), "
            "or 'now' (same as --start); a time more than a minute past is refused"
        ),
    ] = None,
    allow_missing_fields: Annotated[
        bool,
        typer.Option(
            "--allow-missing-fields",
            help="create it even when some contacts lack a field the templates use",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the task as JSON")] = False,
) -> None:
    """Create a task with one sub-task per contact; its templates are checked first.

    NAME: at most 200 characters, no control characters.
    """
    from edm import tasks as tasks_mod
    from edm import validation

    html_source = None
    if html is not None:
        try:
            html_source = html.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read --html {str(html)!r}: {exc.strerror}")
        except UnicodeDecodeError:
            fail(f"--html {str(html)!r} is not UTF-8 text")
    names = []
    if services is not None:
        names = validation.service_names(services, "--services", error=tasks_mod.TaskInputError)
    start_at = None
    if at is not None and at.strip().lower() == "now":
        start = True
    elif at is not None:
        start_at = parse_time(at)
    db = engine()
    task_id = tasks_mod.create_task(
        db,
        name,
        subject,
        html=html_source,
        text_body=text,
        from_addr=from_addr,
        services=names,
        start=start,
        priority=priority,
        delivery_policy=delivery,
        start_at=start_at,
        allow_missing_fields=allow_missing_fields,
    )
    if as_json:
        print_json(tasks_mod.show_task(db, task_id).as_json())
    else:
        out.print(f"task {task_id} created" + (" and started" if start else ""))


WATCH_SECONDS = 1.0


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command("list")
@handles_errors
def task_list(as_json: Json = False) -> None:
    """Every task: its status, when it is scheduled or started, and its sub-tasks by status."""
    from edm import task_views

    views = task_views.list_tasks(engine())
    if as_json:
        print_json([v.as_json() for v in views])
        return
    table = Table("id", "name", "status", "starts / started (UTC)", "sub-tasks by status")
    for v in views:
        when = v.started_at or v.scheduled_at
        table.add_row(
            str(v.id),
            escape(v.name),
            v.status,
            datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M") if when else "-",
            _counts(v) or "none",
        )
    out.print(table)


def _counts(view) -> str:  # type: ignore[no-untyped-def]
    """Every status a task's sub-tasks are in, in lifecycle order."""
    from edm.db.models import SUBTASK_STATUSES

    return ", ".join(
        f"{status} {view.counts[status]:,}"
        for status in SUBTASK_STATUSES  # the order a task moves through them
        if view.counts.get(status)
    )


def _render_task(view) -> Table:  # type: ignore[no-untyped-def]
    """The text of `task show`: one grid, so `--watch` can redraw it whole."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = view.status + (f" ({escape(view.status_reason)})" if view.status_reason else "")
    grid.add_row("task", f"{view.id} {escape(view.name)}")
    grid.add_row("status", status)
    grid.add_row("scheduled", _when(view.scheduled_at))
    grid.add_row("started", _when(view.started_at))
    grid.add_row("completed", _when(view.completed_at))
    grid.add_row("services", escape(", ".join(view.services)) or "any service")
    grid.add_row("delivery", f"{view.delivery_policy}, priority {view.priority}")
    grid.add_row("sub-tasks", f"{view.total:,}: {_counts(view)}" if view.total else "none")
    grid.add_row("rate", f"{view.sent_last_minute:,} sent in the last minute")
    if view.funnel:
        rates = view.rates
        grid.add_row(
            "funnel",
            ", ".join(
                f"{fact.replace('_', ' ')} {n:,} ({rates[fact]:.1%})"
                for fact, n in view.funnel.items()
            )
            + " of sent",
        )
        grid.add_row(
            "by state",
            ", ".join(
                f"{state.replace('_', ' ')} {n:,}"
                for state, n in sorted(view.shown.items(), key=lambda item: -item[1])
            ),
        )
    if view.reasons:
        reasons = Table("count", "status", "class", "reason", box=None, pad_edge=False)
        for reason in view.reasons:
            reasons.add_row(
                f"{reason.count:,}",
                reason.status,
                reason.error_class or "-",
                escape(reason.message),
            )
        grid.add_row("why", reasons)
    return grid


@app.command("show")
@handles_errors
def task_show(
    task_id: TaskId,
    as_json: Json = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="redraw every second until the task ends or Ctrl-C")
    ] = False,
) -> None:
    """Task TASK_ID (see `edm task list`): status, times, counts, failure reasons, rate."""
    from edm import task_views, validation

    validation.record_id(task_id, "task", error=task_views.TaskNotFound)
    db = engine()
    view = task_views.show_task(db, task_id)
    if as_json:
        print_json(view.as_json())
        return
    if not watch:
        out.print(_render_task(view))
        return
    import time

    from rich.live import Live

    with Live(_render_task(view), console=out, auto_refresh=False) as live:
        try:
            while view.status not in ("completed", "cancelled"):
                time.sleep(WATCH_SECONDS)
                view = task_views.show_task(db, task_id)
                live.update(_render_task(view), refresh=True)
        except KeyboardInterrupt:
            pass


def _task_action(action: str, verb: str, doc: str) -> Callable[[int], None]:
    @handles_errors
    def command(task_id: TaskId) -> None:
        from edm import tasks as tasks_mod
        from edm import validation

        validation.record_id(task_id, "task", error=tasks_mod.TaskInputError)
        getattr(tasks_mod, action)(engine(), task_id)
        out.print(f"task {task_id} {verb}")

    command.__doc__ = doc
    return command


app.command("start")(
    _task_action("start_task", "started", "Start sending draft or scheduled task TASK_ID now.")
)
app.command("pause")(
    _task_action(
        "pause_task", "paused", "Pause running or scheduled task TASK_ID; resume picks it up again."
    )
)
app.command("resume")(
    _task_action(
        "resume_task",
        "resumed",
        "Resume paused task TASK_ID; one paused before its start time waits for it again.",
    )
)
app.command("cancel")(
    _task_action(
        "cancel_task", "cancelled", "Cancel task TASK_ID: sub-tasks not yet sent are cancelled."
    )
)
