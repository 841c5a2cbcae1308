"""`edm worker` and `edm demo`: the commands that send."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from edm.cli.common import engine, handles_errors, out, setup_logging


@handles_errors
def worker(
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="exit 0 once no running task has work left")
    ] = False,
) -> None:
    """Send: one worker per enabled, unfrozen service, until SIGTERM or SIGINT."""
    from edm.config import get_settings
    from edm.scheduler.supervisor import Supervisor

    setup_logging()
    supervisor = Supervisor(
        engine(),
        get_settings(),
        exit_when_idle=exit_when_idle,
        say=lambda message: out.print(message, highlight=False),
    )
    raise typer.Exit(asyncio.run(supervisor.run()))


@handles_errors
def demo(contacts: Annotated[int, typer.Option(min=1, help="contacts to generate")] = 200) -> None:
    """Two sandbox services at the production pair's pace (scaled 100x), live progress."""
    from edm.demo import run_demo

    setup_logging(logging.WARNING)
    raise typer.Exit(run_demo(contacts, out))
