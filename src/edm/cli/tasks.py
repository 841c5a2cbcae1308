"""`edm task`: campaigns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edm.cli.common import engine, fail, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Campaign tasks: create, follow, pause, cancel.")


def parse_time(value: str) -> float:
    """An ISO 8601 time as epoch seconds; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--at must be an ISO 8601 time such as 2026-12-01T09:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@app.command("create")
@handles_errors
def task_create(
    name: str,
    subject: Annotated[str, typer.Option(help="subject template")],
    html: Annotated[Path | None, typer.Option(help="HTML template file")] = None,
    text: Annotated[str | None, typer.Option(help="text template")] = None,
    from_addr: Annotated[str | None, typer.Option("--from", help="sender address")] = None,
    services: Annotated[str | None, typer.Option(help="comma-separated service names")] = None,
    priority: Annotated[int, typer.Option(help="higher is sent first")] = 0,
    delivery: Annotated[str, typer.Option(help="at_most_once | at_least_once")] = "at_most_once",
    start: Annotated[bool, typer.Option("--start", help="start sending at once")] = False,
    at: Annotated[
        str | None, typer.Option(help="start at this time (ISO 8601, e.g. 2026-12-01T09:00Z)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a task with one sub-task per contact."""
    from edm import tasks as tasks_mod

    html_source = None
    if html is not None:
        try:
            html_source = html.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read --html {html}: {exc.strerror}")
    names = [s.strip() for s in services.split(",") if s.strip()] if services else []
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
        start_at=parse_time(at) if at else None,
    )
    if as_json:
        print_json(tasks_mod.show_task(db, task_id).as_json())
    else:
        out.print(f"task {task_id} created" + (" and started" if start else ""))


@app.command("list")
@handles_errors
def task_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every task with its status and counts."""
    from edm import tasks as tasks_mod

    views = tasks_mod.list_tasks(engine())
    if as_json:
        print_json([v.as_json() for v in views])
        return
    table = Table("id", "name", "status", "total", "sent", "failed", "pending", "unknown")
    for v in views:
        c = v.counts
        table.add_row(
            str(v.id),
            v.name,
            v.status,
            str(v.total),
            str(c.get("sent", 0)),
            str(c.get("failed", 0)),
            str(c.get("pending", 0)),
            str(c.get("unknown", 0)),
        )
    out.print(table)


@app.command("show")
@handles_errors
def task_show(task_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One task: status and sub-task counts."""
    from edm import tasks as tasks_mod

    view = tasks_mod.show_task(engine(), task_id)
    if as_json:
        print_json(view.as_json())
        return
    out.print(f"task {view.id} [bold]{view.name}[/bold]: {view.status}, {view.total} sub-tasks")
    for status, n in sorted(view.counts.items()):
        out.print(f"  {status:<10} {n}")


def _task_action(action: str, verb: str) -> Callable[[int], None]:
    @handles_errors
    def command(task_id: int) -> None:
        from edm import tasks as tasks_mod

        getattr(tasks_mod, action)(engine(), task_id)
        out.print(f"task {task_id} {verb}")

    command.__doc__ = f"Mark a task {verb}."
    return command


app.command("start")(_task_action("start_task", "started"))
app.command("pause")(_task_action("pause_task", "paused"))
app.command("resume")(_task_action("resume_task", "resumed"))
app.command("cancel")(_task_action("cancel_task", "cancelled"))
