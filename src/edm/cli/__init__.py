"""The `edm` command line: thin wrappers over the domain modules.

Every failure the user can cause ends in one line on stderr and a non-zero exit, never
a traceback. Command modules import the domain (and SQLAlchemy) only inside the commands,
so `edm --help` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edm.cli import (
    audience,
    contacts,
    db,
    diagnose,
    events,
    health,
    lists,
    plan,
    repair,
    report,
    run,
    serve,
    services,
    tasks,
    tokens,
    users,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="edm: a self-hosted email-marketing delivery engine.",
)
app.add_typer(db.app, name="db")
app.add_typer(services.app, name="service")
app.add_typer(contacts.app, name="contacts")
app.add_typer(tasks.app, name="task")
app.add_typer(events.app, name="events")
app.add_typer(lists.app, name="list")
app.add_typer(audience.app, name="audience")
app.add_typer(tokens.app, name="token")
app.add_typer(users.app, name="user")
app.command("worker")(run.worker)
app.command("demo")(run.demo)
app.command("serve")(serve.serve)
app.command("health")(health.health)
app.command("repair")(repair.repair)
app.command("plan")(plan.plan)
app.command("report")(report.report)
app.command("diagnose")(diagnose.diagnose)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"edm {version('edm')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """edm: a self-hosted email-marketing delivery engine."""


def main() -> None:
    app()
