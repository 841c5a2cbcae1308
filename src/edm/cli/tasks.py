"""`edm task`: campaigns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.audience import audience_option
from edm.cli.common import engine, fail, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Campaign tasks: create, follow, pause, cancel.")

# The docstrings describe the arguments: click 8.5 drops the help that typer 0.24 gives
# an argument.
TaskId = Annotated[int, typer.Argument(metavar="TASK_ID")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


def parse_time(value: str) -> float:
    """An ISO 8601 time as epoch seconds; without a zone it is taken as UTC."""
    from edm.task_actions import parse_time as parse  # the rule the API uses too

    return parse(value, "--at")


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
    lists: Annotated[
        str | None,
        typer.Option(help="comma-separated lists to send to; default: every contact"),
    ] = None,
    exclude: Annotated[
        str | None, typer.Option(help="comma-separated lists whose members are left out")
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(help='a condition on contact fields: city = "Paris" and plan != "free"'),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the task as JSON")] = False,
) -> None:
    """Create a task with one sub-task per contact of its audience; its templates are
    checked first.

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
    audience = audience_option(lists, exclude, where)
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
        audience=audience,
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


def _eta(db, view):  # type: ignore[no-untyped-def]
    """When a running task ends, at its services' pace and quotas (edm.forecast)."""
    if view.status != "running":
        return None
    from edm.forecast import task_eta

    return task_eta(db, view.id, counts=view.counts)


def _render_task(view, eta=None) -> Table:  # type: ignore[no-untyped-def]
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
    audience = ", ".join(view.lists) or "every contact"
    if view.exclude:
        audience += f", less {', '.join(view.exclude)}"
    if view.where:
        audience += f", where {view.where}"
    grid.add_row("audience", escape(audience))
    if eta is not None:
        grid.add_row("ends", escape("; ".join(eta.notes) if eta.notes else (eta.reason or "-")))
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
        eta = _eta(db, view)
        print_json({**view.as_json(), "eta": eta.as_dict() if eta else None})
        return
    if not watch:
        out.print(_render_task(view, _eta(db, view)))
        return
    import time

    from rich.live import Live

    with Live(_render_task(view, _eta(db, view)), console=out, auto_refresh=False) as live:
        try:
            while view.status not in ("completed", "cancelled"):
                time.sleep(WATCH_SECONDS)
                view = task_views.show_task(db, task_id)
                live.update(_render_task(view, _eta(db, view)), refresh=True)
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


# -- preview, test send, resend, sub-tasks, export (edm.task_actions) --------------------------
Contact = Annotated[
    str | None,
    typer.Option(
        "--contact", metavar="EMAIL", help="a contact of the task; default: the next one due"
    ),
]


def _statuses(value: str | None, allowed: tuple[str, ...] | None = None) -> list[str]:
    """A comma-separated `--status` as a list; None or empty: every status `allowed`."""
    from edm import task_actions

    names = (value or "").split(",")
    if allowed is None:
        return task_actions.statuses_of(names, "--status")
    return task_actions.statuses_of(names, "--status", allowed)


def _plain(text: str) -> None:
    """A template's output as it is: no markup, no highlighting, no wrapping."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("preview")
@handles_errors
def task_preview(task_id: TaskId, contact: Contact = None, as_json: Json = False) -> None:
    """Task TASK_ID's message for one contact, rendered as the worker renders it (its
    unsubscribe link included)."""
    from edm import task_actions

    shown = task_actions.preview(engine(), task_id, contact)
    if as_json:
        print_json(
            {
                "contact": shown.contact_email,
                "subject": shown.subject,
                "html": shown.html,
                "text": shown.text,
            }
        )
        return
    _plain(f"contact: {shown.contact_email}")
    _plain(f"subject: {shown.subject}")
    for part, body in (("text", shown.text), ("html", shown.html)):
        if body is not None:
            _plain(f"\n--- {part} ---")
            _plain(body.rstrip("\n"))


@app.command("test-send")
@handles_errors
def task_test_send(
    task_id: TaskId,
    to: Annotated[str, typer.Option(help="the address that receives the test message")],
    contact: Contact = None,
    service: Annotated[
        str | None,
        typer.Option(help="the service to send through; default: the task's first usable one"),
    ] = None,
) -> None:
    """Send task TASK_ID's message, rendered for one contact, to the address --to, its
    subject starting with [test]; the provider's answer is shown."""
    from edm import task_actions
    from edm.config import get_settings

    sent = task_actions.test_send(engine(), get_settings(), task_id, to, contact, service)
    if not sent.accepted:
        code = f" (code {sent.code})" if sent.code else ""
        fail(f"{sent.service} answered with a {sent.error_class} error{code}: {sent.error}")
    note = " (a repeat of an earlier message)" if sent.duplicate else ""
    _plain(
        f"{sent.service} accepted the test message to {sent.to}, rendered for"
        f" {sent.contact_email}{note}: {sent.provider_message_id}"
    )


@app.command("resend")
@handles_errors
def task_resend(
    task_id: TaskId,
    status: Annotated[
        str, typer.Option(help="comma-separated statuses to send again: failed, unknown")
    ] = "failed,unknown",
) -> None:
    """Send task TASK_ID's failed (and unknown) sub-tasks again as new attempts; a
    completed task runs again. Sub-tasks of suppressed contacts are left as they are."""
    from edm import task_actions

    statuses = _statuses(status, task_actions.RESENDABLE)
    resent = task_actions.resend(engine(), task_id, statuses)
    if resent:
        out.print(f"task {task_id}: {resent:,} sub-task{'s' if resent != 1 else ''} pending again")
    else:
        out.print(f"task {task_id}: no {' or '.join(statuses)} sub-task of an active contact")


@app.command("sub-tasks")
@handles_errors
def task_sub_tasks(
    task_id: TaskId,
    status: Annotated[str | None, typer.Option(help="only sub-tasks in this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, from 1 to 10000")] = 50,
    after: Annotated[int, typer.Option(help="only sub-tasks with a greater id (paging)")] = 0,
    as_json: Json = False,
) -> None:
    """Task TASK_ID's sub-tasks by id: contact, status, service, attempts, error, facts."""
    from dataclasses import asdict

    from edm import task_actions

    if status is not None:
        task_actions.statuses_of([status], "--status")  # refused naming the option
    rows = task_actions.sub_tasks(engine(), task_id, status, after, limit)
    if as_json:
        print_json([asdict(row) for row in rows])
        return
    table = Table()
    for column in ("id", "email", "status", "service", "attempts", "sent (UTC)", "error"):
        table.add_column(column, no_wrap=column == "email")  # an address whole; errors wrap
    for row in rows:
        error = f"{row.error_class}: {row.last_error}" if row.error_class else row.last_error
        table.add_row(
            str(row.id),
            escape(row.email),
            row.status,
            escape(row.service or "-"),
            str(row.attempts),
            _when(row.sent_at),
            escape(error or ""),
        )
    out.print(table)
    if len(rows) == limit:
        out.print(f"more: --after {rows[-1].id}")


@app.command("export")
@handles_errors
def task_export(
    task_id: TaskId,
    file: Annotated[
        Path | None, typer.Argument(metavar="[FILE]", help="where to write; default: stdout")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="comma-separated statuses; default: every status")
    ] = None,
) -> None:
    """Task TASK_ID's sub-tasks as CSV (id, email, status, service, attempts, error,
    times in UTC), read and written a batch at a time.

    FILE: where to write the CSV; default: stdout.
    """
    import sys

    from edm import task_actions

    lines = task_actions.export_lines(engine(), task_id, _statuses(status))
    if file is None:
        for line in lines:
            sys.stdout.write(line)
        return
    try:
        handle = file.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        fail(f"cannot write {str(file)!r}: {exc.strerror}")
        return
    written = -1  # the header is no sub-task
    with handle:
        for line in lines:
            handle.write(line)
            written += 1
    _plain(f"{written:,} sub-tasks of task {task_id} written to {file}")
