"""What an operator sees of the event log, and the ids an operator may reprocess."""

from __future__ import annotations

from sqlalchemy import Engine

from edm.db import event_queries as eq
from edm.db.queries import query

# Statuses `edm events list --status` knows; `duplicate` means "received more than once",
# `invalid` lists the requests whose body could not be parsed (they hold no event).
LISTED_STATUSES = (
    "received",
    "applied",
    "duplicate",
    "unmatched",
    "given_up",
    "error",
    "ignored",
    "invalid",
)
REPROCESSABLE = ("unmatched", "given_up", "error")


class EventQueryError(ValueError):
    """A filter that names nothing real; the message says which."""


# Above every id: the first page.
FIRST_PAGE = 2**63 - 1


def list_events(
    engine: Engine,
    *,
    task_id: int | None = None,
    status: str | None = None,
    limit: int = 50,
    before: int = FIRST_PAGE,
) -> list[dict]:
    """Events newest first, with ids below `before` (the cursor of the next page)."""
    if status is not None and status not in LISTED_STATUSES:
        raise EventQueryError(f"--status must be one of {', '.join(LISTED_STATUSES)}")
    if not 1 <= limit <= 10_000:
        raise EventQueryError("--limit must be from 1 to 10000")
    with engine.connect() as conn:
        if status == "invalid":
            rows = conn.execute(
                query(eq.INVALID_REQUEST_LIST, engine.dialect.name),
                {"task_id": task_id, "before": before, "limit": limit},
            )
            return [dict(row._mapping) for row in rows]
        rows = conn.execute(
            query(eq.EVENT_LIST, engine.dialect.name),
            {"status": status, "task_id": task_id, "before": before, "limit": limit},
        )
        return [dict(row._mapping) for row in rows]


def reprocessable_ids(engine: Engine, status: str, limit: int = 10_000) -> list[int]:
    if status not in REPROCESSABLE:
        raise EventQueryError(f"only {', '.join(REPROCESSABLE)} events can be reprocessed")
    with engine.connect() as conn:
        result = conn.execute(
            query(eq.EVENT_IDS_BY_STATUS, engine.dialect.name), {"status": status, "limit": limit}
        )
        return list(result.scalars())


def reprocess_events(engine: Engine, ids: list[int], status: str | None) -> tuple[int, dict]:
    """What `edm events reprocess` does: the events named by id and those in `status`, an
    id named twice reprocessed once; how many, and what became of them."""
    from edm.events import pipeline

    named = list(dict.fromkeys(ids + (reprocessable_ids(engine, status) if status else [])))
    return len(named), pipeline.reprocess(engine, named)
