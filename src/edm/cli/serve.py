"""`edm serve`: the HTTP API (webhooks, unsubscribe links, health) and, unless
--no-worker, the same sending workers as `edm worker`, in one process."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from edm.cli.common import engine, handles_errors, out, setup_logging


@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="do not send (run `edm worker` elsewhere); upkeep and webhooks still run",
        ),
    ] = False,
) -> None:
    """Serve webhooks and unsubscribe links, and send, until SIGTERM or SIGINT."""
    from edm.api.server import serve as serve_forever
    from edm.config import get_settings
    from edm.db.engine import display_url

    settings = get_settings()
    # First, before the migration's logs or an error about it: which database this is.
    out.print(f"database: {display_url(settings.database_url)}", highlight=False, soft_wrap=True)
    setup_logging()
    database = engine()
    public = settings.public_url.rstrip("/")
    for label, path in (
        ("EngageLab webhook URL", "/api/webhooks/mail-event"),
        ("generic webhook URL", "/api/webhooks/generic"),
        ("unsubscribe links", "/unsubscribe/"),
    ):
        out.print(f"{label + ':':<23}{public}{path}", highlight=False, soft_wrap=True)
    if not settings.webhook_token:
        out.print(
            "EDM_WEBHOOK_TOKEN is not set: the generic webhook accepts only the sandbox token",
            highlight=False,
            soft_wrap=True,
        )
    say = lambda message: out.print(message, highlight=False)  # noqa: E731
    raise typer.Exit(
        asyncio.run(
            serve_forever(database, settings, host=host, port=port, worker=not no_worker, say=say)
        )
    )
