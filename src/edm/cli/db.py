"""`edm db`: the schema."""

from __future__ import annotations

import typer

from edm.cli.common import engine, handles_errors, out

app = typer.Typer(no_args_is_help=True, help="The database and its schema.")


@app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the schema migrations (every command also does this itself)."""
    engine()
    out.print("database is up to date")
