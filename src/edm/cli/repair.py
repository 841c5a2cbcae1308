"""`edm repair`: fix now what a machine can fix, and say what was done."""

from __future__ import annotations

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
) -> None:
    """Release sub-tasks past their lease, retry unmatched and failed events, set delivery
    facts that differ from the event log again from it."""
    from edm.cli.common import engine
    from edm.config import get_settings
    from edm.health.repair import repair as run_repair

    repairs = run_repair(engine(), get_settings(), dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "repairs": [r.as_dict() for r in repairs]})
        return
    table = Table("repair", "would fix" if dry_run else "fixed", "what")
    for done in repairs:
        table.add_row(done.kind, str(done.count), escape(done.detail))
    out.print(table)
