"""`edm repair`: fix now what a machine can fix, and say what was done."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import handles_errors, out, print_json


@handles_errors
def repair(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="say what would be repaired, change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
    history: Annotated[
        bool, typer.Option("--history", help="show the repairs done so far, newest first")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="with --history: how many")] = 50,
) -> None:
    """Release sub-tasks past their lease, settle unknown outcomes, retry unmatched and
    failed events, set delivery facts that differ from the event log again from it, lift
    expired freezes and freeze services whose sender reputation is critical."""
    from edm.cli.common import engine
    from edm.config import get_settings
    from edm.health.repair import history as repair_history
    from edm.health.repair import repair as run_repair

    if history:
        _print_history(repair_history(engine(), limit), as_json)
        return
    repairs = run_repair(engine(), get_settings(), dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "repairs": [r.as_dict() for r in repairs]})
        return
    table = Table("repair", "would fix" if dry_run else "fixed", "what")
    for done in repairs:
        table.add_row(done.kind, str(done.count), escape(done.detail))
    out.print(table)


def _print_history(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no repair recorded yet")
        return
    table = Table("when", "repair", "count", "instance", "what")
    for row in rows:
        when = datetime.fromtimestamp(row["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            when, row["kind"], str(row["count"]), escape(row["instance_id"]), escape(row["detail"])
        )
    out.print(table)
