"""`edm health`: every health check, one line each; exit 1 when one is critical."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import handles_errors, out, print_json

COLOURS = {"ok": "green", "warn": "yellow", "critical": "red"}


@handles_errors
def health(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Every health check with its status, value, threshold and what to do; exit 1 when
    one is critical (an unreachable database included)."""
    from edm.config import get_settings
    from edm.db import open_database
    from edm.health.checks import CRITICAL, run_checks, worst

    settings = get_settings()
    # Not migrated: a schema behind this edm is reported, not changed.
    results = run_checks(open_database(settings.database_url, migrate=False), settings)
    overall = worst(results)
    if as_json:
        print_json({"status": overall, "checks": [result.as_dict() for result in results]})
    else:
        table = Table("check", "status", "value", "what it says")
        for result in results:
            colour = COLOURS[result.status]
            table.add_row(
                result.name,
                f"[{colour}]{result.status}[/{colour}]",
                escape(_shown(result.value)),
                escape(result.message),
            )
        out.print(table)
        out.print(f"overall: [{COLOURS[overall]}]{overall}[/{COLOURS[overall]}]")
    if overall == CRITICAL:
        raise typer.Exit(1)


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {count}" for key, count in value.items())
    return "-" if value is None else str(value)
