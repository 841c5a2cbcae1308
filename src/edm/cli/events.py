"""`edm events`: the tracking events webhooks brought in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Tracking events: list them, reprocess them.")


@app.command("list")
@handles_errors
def events_list(
    task: Annotated[int | None, typer.Option(help="only events of this task")] = None,
    status: Annotated[
        str | None,
        typer.Option(
            help="received | applied | duplicate | unmatched | given_up | error | ignored"
            " | invalid (requests that could not be parsed)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="newest first, at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """The newest events, with what they were matched to or why not."""
    from edm.events.views import list_events

    rows = list_events(engine(), task_id=task, status=status, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "time (UTC)", "provider", "event", "status", "sub-task", "task", "note")
    for row in rows:
        note = row["error"] or (f"by {row['matched_by']}" if row["matched_by"] else "")
        if row["duplicates"]:
            note = f"{note} ({row['duplicates']} repeats)".strip()
        table.add_row(
            str(row["id"]),
            datetime.fromtimestamp(row["occurred_at"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
            row["provider"],
            row["event"],
            row["status"],
            str(row["sub_task_id"] or "-"),
            str(row["task_id"] or "-"),
            escape(note[:80]),
        )
    out.print(table)


@app.command("reprocess")
@handles_errors
def events_reprocess(
    status: Annotated[
        str | None, typer.Option(help="every event in this status: unmatched, given_up, error")
    ] = None,
    event_id: Annotated[
        list[int] | None, typer.Option("--id", help="this event (repeatable)")
    ] = None,
) -> None:
    """Match and apply events again: after a fix, or once the sub-task they name exists."""
    from edm.events.views import reprocess_events

    if not status and not event_id:
        raise ValueError("name the events: --status STATUS or --id ID")
    count, counts = reprocess_events(engine(), list(event_id or []), status)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "nothing to do"
    out.print(f"reprocessed {count} events: {summary}")
