"""`edm db`: the database in use and its schema."""

from __future__ import annotations

from typing import Annotated

import typer

from edm.cli.common import engine, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="The database and its schema.")

COUNTED = ("services", "contacts", "tasks")


@app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the schema migrations (every command also does this itself)."""
    engine()
    out.print("database is up to date")


@app.command("info")
@handles_errors
def db_info(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which database this environment uses (password hidden), its schema and its size."""
    from sqlalchemy import text

    from edm.db.engine import display_url
    from edm.db.migrate import current_revision

    database = engine()
    with database.connect() as conn:
        counts = {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in COUNTED
        }
    info = {
        "url": display_url(database.url),
        "backend": database.dialect.name,
        "schema_revision": current_revision(database),
        **counts,
    }
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        out.print(f"{key.replace('_', ' ') + ':':<17}{value}", highlight=False, soft_wrap=True)
