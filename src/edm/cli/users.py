"""`edm user`: people who sign in to the console with a password."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edm.cli.common import engine, handles_errors, out, print_json

app = typer.Typer(no_args_is_help=True, help="Console users: create, list, password, role, delete.")

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="read the password from the first line of stdin (scripts)"
    ),
]


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M") if epoch else "-"


def _password(from_stdin: bool) -> str:
    """From stdin's first line, or typed twice at a prompt that does not echo it."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to type the password at: pass --password-stdin")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@app.command("create")
@handles_errors
def user_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin (may change anything) or read")] = "read",
    password_stdin: PasswordStdin = False,
) -> None:
    """Make user NAME, who signs in to the console with a password (12 characters or more)."""
    from edm.users import create_user

    create_user(engine(), name, _password(password_stdin), role)
    out.print(f"user {escape(name)} ({role}) made")


@app.command("password")
@handles_errors
def user_password(name: str, password_stdin: PasswordStdin = False) -> None:
    """Give user NAME a new password; their open sessions end."""
    from edm.users import set_password

    set_password(engine(), name, _password(password_stdin))
    out.print(f"user {escape(name)} has a new password")


@app.command("role")
@handles_errors
def user_role(name: str, role: str) -> None:
    """Make user NAME an admin or a reader; their open sessions end."""
    from edm.users import set_role

    set_role(engine(), name, role)
    out.print(f"user {escape(name)} is now {role}")


@app.command("list")
@handles_errors
def user_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every user: name, role, when the password was set and last used."""
    from edm.users import list_users

    views = list_users(engine())
    if as_json:
        print_json([vars(view) for view in views])
        return
    table = Table("name", "role", "created", "password set", "last sign-in")
    for view in views:
        table.add_row(
            escape(view.name),
            view.role,
            _when(view.created_at),
            _when(view.password_set_at),
            _when(view.last_login_at),
        )
    out.print(table)


@app.command("delete")
@handles_errors
def user_delete(name: str) -> None:
    """Delete user NAME; their open sessions end."""
    from edm.users import delete_user

    delete_user(engine(), name)
    out.print(f"user {escape(name)} deleted")
