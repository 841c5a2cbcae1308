"""`edm token`: bearer tokens of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="API tokens: create, list, revoke.")


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M") if epoch else "-"


@app.command("create")
@handles_errors
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin (may change anything) or read")] = "read",
) -> None:
    """Make a token and print it, once: only its hash is kept."""
    from edm.api_tokens import create_token

    token = create_token(engine(), name, role)
    out.print(token, markup=False, highlight=False)
    typer.echo(
        f"token {name} ({role}) made: keep it now, it cannot be shown again."
        " Send it as `Authorization: Bearer TOKEN`.",
        err=True,
    )


@app.command("list")
@handles_errors
def token_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every token: its name, role and use (never the token)."""
    from edm.api_tokens import list_tokens

    views = list_tokens(engine())
    if as_json:
        print_json([vars(view) for view in views])
        return
    table = Table("name", "role", "created", "last used", "revoked")
    for view in views:
        table.add_row(
            escape(view.name),
            view.role,
            _when(view.created_at),
            _when(view.last_used_at),
            _when(view.revoked_at),
        )
    out.print(table)


@app.command("revoke")
@handles_errors
def token_revoke(name: str) -> None:
    """Stop token NAME from working, at once."""
    from edm.api_tokens import revoke_token

    revoke_token(engine(), name)
    out.print(f"token {escape(name)} revoked")
