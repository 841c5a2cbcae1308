"""What every command shares: the consoles, one-line errors, the database, JSON output.

Nothing here imports SQLAlchemy or a domain module at import time: `edm --help` and the
first line of every command must not wait for them.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from sqlalchemy import Engine

out = Console()
err = Console(stderr=True)

SECRET_WORDS = ("key", "password", "secret", "token")


def fail(message: str, code: int = 1) -> None:
    # The message may repeat what the user typed: it is text, never markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _database_error(exc: BaseException, *, opening: bool = False) -> str | None:
    """The one line to show for a database that cannot be reached, or None.

    While opening, any driver error is about the URL or the server (a bad query option
    such as `connect_timeout=abc` is the driver's ProgrammingError), never a bug of ours.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError if opening else OperationalError):
        return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
    return None


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input (every domain error is a ValueError) and an unreachable database end in
    one line on stderr and exit 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValueError as exc:
            fail(str(exc))
        except Exception as exc:
            reason = _database_error(exc)
            if reason is None:
                raise
            fail(f"database unavailable: {reason}")

    return wrapper


def engine() -> Engine:
    from edm.db import open_database

    try:
        return open_database()
    except Exception as exc:
        reason = _database_error(exc, opening=True)
        if reason is None:
            raise
        fail(f"cannot open the database: {reason}")
        raise  # unreachable


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def masked(options: dict) -> dict:
    return {
        k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in options.items()
    }


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: one line per provider call or posted event.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
