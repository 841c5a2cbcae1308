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
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="serve this worker's own Prometheus metrics (sends, latency) on this port",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="address the metrics port listens on")
    ] = "0.0.0.0",
) -> None:
    """Send: one worker per enabled, unfrozen service, until SIGTERM or SIGINT."""
    from edm.config import get_settings
    from edm.db.engine import display_url
    from edm.scheduler.supervisor import Supervisor

    settings = get_settings()
    # First, before the migration's logs or an error about it: which database this is.
    out.print(f"database: {display_url(settings.database_url)}", highlight=False, soft_wrap=True)
    setup_logging()
    if metrics_port is not None:
        from edm.health.metrics import start_metrics_server

        try:
            start_metrics_server(metrics_port, metrics_host)
        except OSError as exc:
            raise ValueError(f"--metrics-port {metrics_port}: {exc.strerror or exc}") from None
        out.print(f"metrics: http://{metrics_host}:{metrics_port}/metrics", highlight=False)
    supervisor = Supervisor(
        engine(),
        settings,
        exit_when_idle=exit_when_idle,
        say=lambda message: out.print(message, highlight=False),
    )
    raise typer.Exit(asyncio.run(supervisor.run()))


@handles_errors
def demo(
    contacts: Annotated[int, typer.Option(min=1, help="contacts to generate")] = 200,
    database: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="run on this database instead of a throwaway SQLite file; "
            "refused if it already holds services, contacts or tasks",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="keep the throwaway database and say how to open it")
    ] = False,
) -> None:
    """Two sandbox services at the production pair's pace (scaled 100x), live progress.

    Always on its own database, never a real installation's: EDM_DATABASE_URL is ignored.
    """
    from edm import demo as demo_mod

    setup_logging(logging.WARNING)
    raise typer.Exit(demo_mod.run(contacts, out, database=database, keep=keep))
