"""`edm list`: named lists of contacts, the audiences of tasks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Contact lists: create, list, delete.")


@app.command("create")
@handles_errors
def list_create(
    name: str,
    description: Annotated[str | None, typer.Option(help="what the list is for")] = None,
) -> None:
    """Create an empty list (`edm contacts import FILE --list NAME` fills it)."""
    from edm.audience.lists import create_list

    create_list(engine(), name, description)
    out.print(f"list {escape(name)} created")


@app.command("list")
@handles_errors
def list_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every list, with its members and how many of them can be sent to."""
    from edm.audience.lists import list_lists

    views = list_lists(engine())
    if as_json:
        print_json([vars(view) for view in views])
        return
    table = Table("name", "members", "active", "created", "description")
    for view in views:
        created = datetime.fromtimestamp(view.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            escape(view.name),
            f"{view.members:,}",
            f"{view.active:,}",
            created,
            escape(view.description or ""),
        )
    out.print(table)


@app.command("delete")
@handles_errors
def list_delete(name: str) -> None:
    """Delete a list; its contacts stay. Refused while a task that can still send uses it."""
    from edm.audience.lists import delete_list

    members = delete_list(engine(), name)
    out.print(f"list {escape(name)} deleted ({members:,} members; the contacts stay)")
