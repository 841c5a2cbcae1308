"""`edm contacts`: the people a task sends to."""

from __future__ import annotations

from pathlib import Path

import typer

from edm.cli.common import engine, err, fail, handles_errors, out

app = typer.Typer(no_args_is_help=True, help="Contacts: import from CSV.")


@app.command("import")
@handles_errors
def contacts_import(file: Path) -> None:
    """Import a CSV with a header row; `email` is required, other columns become fields."""
    from edm import contacts as contacts_mod

    report = contacts_mod.import_csv(engine(), file)
    out.print(f"imported {report.imported} contacts")
    for line, reason in report.bad_rows:
        err.print(f"line {line}: {reason}", highlight=False)
    if report.bad_rows:
        fail(f"{len(report.bad_rows)} bad row(s) not imported")
