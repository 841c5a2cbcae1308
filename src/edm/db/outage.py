"""Telling a database outage from a bug in a loop's log.

Every background loop (upkeep, the webhook processor, alerts) retries after a failure.
While the database is away each of them fails every pass: a traceback each time would
bury the one line that matters, so an outage is logged as one line naming it, and only
an unexpected error with its traceback.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


def database_unavailable(exc: BaseException) -> str | None:
    """The driver's first line when `exc` (or what caused it) is the database being
    unreachable or its connection lost; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OperationalError, InterfaceError)) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            text = str(seen.orig if seen.orig is not None else seen).strip()
            return (text.splitlines() or ["no detail"])[0][:300]
        seen = seen.__cause__ or seen.__context__
    return None


def log_failure(log: logging.Logger, message: str, exc: BaseException) -> None:
    reason = database_unavailable(exc)
    if reason is not None:
        log.error("%s: database unavailable: %s", message, reason)
    else:
        log.error(message, exc_info=exc)
