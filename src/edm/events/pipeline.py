"""From a logged webhook request to applied facts: parse → de-duplicate → match → apply.

Each step is named once here. The request is already in the event log (`intake`); a
request that cannot be parsed is marked `invalid` and kept. Each event is recorded once
(`events` is unique by provider and key; a repeat only counts), then matched and applied
together with its `applied` mark (under a savepoint when many are applied in one
transaction), so nothing is ever half-applied. Requests go through one path, whether a
batch of them (`process_batch`, the serving process's processor) or one (`process_request`,
upkeep's retry): claim, record, apply, finish. An event that matches nothing is
`unmatched` and tried again by upkeep; one whose apply failed keeps the error and can be
reprocessed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from edm.config import get_settings
from edm.db import event_queries as eq
from edm.db.queries import query
from edm.events.apply import SoftBounceLimit, apply_fact
from edm.events.matching import match
from edm.events.parsers.base import IGNORED, ParsedEvent, WebhookParseError, decode_json
from edm.events.parsers.registry import parser_for

log = logging.getLogger(__name__)

# A request still `processing` after this long was left by a process that stopped.
STALE_PROCESSING_SECONDS = 60.0
# How many logged requests one batch takes. Each step of a batch is one transaction for all
# its requests, which is what lets intake keep up on SQLite's single writer.
BATCH_REQUESTS = 100
# Errors kept on an event are cut to this many characters.
ERROR_CHARS = 500
# An event whose apply failed is tried again by upkeep this many times in all, then waits
# for an operator's `edm events reprocess`.
ERROR_ATTEMPTS = 5


@dataclass
class RequestOutcome:
    """What became of one request's events."""

    status: str  # processed | invalid | skipped (another process has it)
    error: str | None = None
    events: int = 0
    duplicates: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def process_request(engine: Engine, request_id: int) -> RequestOutcome:
    """Process one logged request (upkeep's retry of a request a stopped process left)."""
    with engine.begin() as conn:
        claimed = conn.execute(
            query(eq.CLAIM_REQUEST, engine.dialect.name),
            {"id": request_id, "stale": STALE_PROCESSING_SECONDS},
        ).first()
    if claimed is None:
        return RequestOutcome("skipped")
    return _process_claimed(engine, [(request_id, claimed.provider, claimed.body)])[request_id]


def _parse(provider: str, body: str) -> list[ParsedEvent]:
    decoded = decode_json(body)
    parser = parser_for(provider)
    if parser is None:
        raise WebhookParseError(f"no webhook parser for provider {provider!r}")
    try:
        events = parser.parse(decoded)
        for event in events:  # stored as JSON: refuse here what could not be stored
            json.dumps(event.data, allow_nan=False)
    except (RecursionError, ValueError) as exc:
        if isinstance(exc, WebhookParseError):
            raise
        raise WebhookParseError(f"an event's data cannot be stored: {exc}") from None
    return events


def _record_in(
    conn: Connection, items: list[tuple[int, str, ParsedEvent]], outcomes: dict[int, RequestOutcome]
) -> list[tuple[int, int]]:
    """Insert each fact once; (request id, event id) of the new ones that are to be applied.
    A repeat is counted on the event and in its request's outcome."""
    dialect = conn.dialect.name
    new: list[tuple[int, int]] = []
    # In key order, so two requests holding the same facts lock them in the same order.
    for request_id, provider, event in sorted(items, key=lambda i: (i[1], i[2].dedupe_key)):
        params = {
            "request_id": request_id,
            "provider": provider,
            "dedupe_key": event.dedupe_key,
            "event": event.event,
            "occurred_at": event.occurred_at,
            "status": IGNORED if event.event == IGNORED else "received",
            "ref_sub_task_id": event.sub_task_id,
            "ref_task_id": event.task_id,
            "provider_message_id": event.provider_message_id,
            "message_id": event.message_id,
            "recipient": event.recipient,
            "data": json.dumps(event.data),
        }
        inserted = conn.execute(query(eq.INSERT_EVENT, dialect), params).scalar()
        outcome = outcomes[request_id]
        if inserted is None:
            conn.execute(query(eq.COUNT_DUPLICATE, dialect), params)
            outcome.duplicates += 1
        elif event.event == IGNORED:
            outcome.by_status[IGNORED] = outcome.by_status.get(IGNORED, 0) + 1
        else:
            new.append((request_id, int(inserted)))
    return new


def apply_event(engine: Engine, event_id: int) -> str:
    """Match and apply one recorded event; its status afterwards.

    `skipped` when the event is not waiting (already applied, or another process has it).
    """
    dialect = engine.dialect.name
    try:
        with engine.begin() as conn:
            event = conn.execute(query(eq.EVENT_TO_APPLY, dialect), {"id": event_id}).first()
            if event is None:
                return "skipped"
            found = match(conn, event)
            if found is None:
                _settle(conn, event_id, "unmatched")
                return "unmatched"
            _apply(conn, found.sub_task_id, event)
            _settle(conn, event_id, "applied", found.sub_task_id, found.strategy)
        log.debug(
            "event %s applied to sub-task %s",
            event_id,
            found.sub_task_id,
            extra={
                "action": "event_applied",
                "event_id": event_id,
                "sub_task_id": found.sub_task_id,
            },
        )
        return "applied"
    except Exception as exc:  # the raw event stays, with the error, to be reprocessed
        with engine.begin() as conn:
            _settle_failed(conn, event_id, exc)
        return "error"


def _apply(conn: Connection, sub_task_id: int, event) -> None:  # type: ignore[no-untyped-def]
    """One recorded event's fact, with the contact rules of the current settings."""
    settings = get_settings()
    data = event.data if isinstance(event.data, dict) else json.loads(event.data or "{}")
    apply_fact(
        conn,
        sub_task_id,
        event.event,
        event.occurred_at,
        event.provider_message_id,
        data,
        SoftBounceLimit(settings.soft_bounce_limit, settings.soft_bounce_days),
    )


def _settle_failed(conn: Connection, event_id: int, exc: Exception) -> None:
    error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    log.warning(
        "event %s could not be applied: %s",
        event_id,
        error,
        extra={"action": "event_error", "event_id": event_id},
    )
    _settle(conn, event_id, "error", error=error)


def _settle(
    conn,  # type: ignore[no-untyped-def]
    event_id: int,
    status: str,
    sub_task_id: int | None = None,
    matched_by: str | None = None,
    error: str | None = None,
) -> None:
    conn.execute(
        query(eq.SETTLE_EVENT, conn.dialect.name),
        {
            "id": event_id,
            "status": status,
            "applied": status == "applied",
            "sub_task_id": sub_task_id,
            "matched_by": matched_by,
            "error": error,
        },
    )


@dataclass
class RetryReport:
    requests: int = 0
    applied: int = 0
    given_up: int = 0


def retry_pending(
    engine: Engine,
    *,
    unmatched_retry_seconds: float,
    min_age: float = 5.0,
    limit: int = 200,
) -> RetryReport:
    """Upkeep: requests logged but never processed, events still unmatched (a webhook can
    overtake our own commit of the message id) and events recorded but not applied.
    Unmatched events older than `unmatched_retry_seconds` are given up."""
    dialect = engine.dialect.name
    report = RetryReport()
    with engine.begin() as conn:
        report.given_up = conn.execute(
            query(eq.GIVE_UP_UNMATCHED, dialect), {"retry_seconds": unmatched_retry_seconds}
        ).rowcount
        requests = conn.execute(
            query(eq.UNPROCESSED_REQUESTS, dialect), {"min_age": min_age, "limit": limit}
        ).scalars()
        request_ids = list(requests)
        events = conn.execute(
            query(eq.EVENTS_TO_RETRY, dialect),
            {
                "retry_seconds": unmatched_retry_seconds,
                "min_age": min_age,
                "limit": limit,
                "error_attempts": ERROR_ATTEMPTS,
            },
        ).scalars()
        event_ids = list(events)
    for request_id in request_ids:
        if process_request(engine, request_id).status != "skipped":
            report.requests += 1
    for event_id in event_ids:
        if apply_event(engine, event_id) == "applied":
            report.applied += 1
    return report


def reprocess(engine: Engine, event_ids: list[int]) -> dict[str, int]:
    """An operator's retry of events that are unmatched, failed or given up."""
    dialect = engine.dialect.name
    counts: dict[str, int] = {}
    for event_id in event_ids:
        with engine.begin() as conn:
            conn.execute(query(eq.REOPEN_EVENT, dialect), {"id": event_id})
        status = apply_event(engine, event_id)
        counts[status] = counts.get(status, 0) + 1
    return counts


# -- many requests at once -------------------------------------------------------------------
def process_batch(engine: Engine, limit: int = BATCH_REQUESTS) -> int:
    """Process up to `limit` logged requests; how many it took (0: none was waiting)."""
    with engine.begin() as conn:
        claimed = conn.execute(
            query(eq.CLAIM_REQUESTS, engine.dialect.name), {"limit": limit}
        ).all()
    if claimed:
        _process_claimed(engine, [(r.id, r.provider, r.body) for r in claimed])
    return len(claimed)


def _process_claimed(
    engine: Engine, claimed: list[tuple[int, str, str]]
) -> dict[int, RequestOutcome]:
    """Claimed requests (id, provider, body) in three more transactions: record their
    facts, apply those (each under a savepoint), mark the requests."""
    outcomes: dict[int, RequestOutcome] = {}
    items: list[tuple[int, str, ParsedEvent]] = []
    for request_id, provider, body in claimed:
        try:
            parsed = _parse(provider, body)
        except WebhookParseError as exc:
            outcomes[request_id] = RequestOutcome("invalid", str(exc))
            log.info(
                "webhook request %s invalid: %s",
                request_id,
                exc,
                extra={"action": "webhook_invalid", "request_id": request_id},
            )
            continue
        outcomes[request_id] = RequestOutcome("processed", events=len(parsed))
        items += [(request_id, provider, event) for event in parsed]
    with engine.begin() as conn:
        new = _record_in(conn, items, outcomes)
    event_ids = [event_id for _, event_id in new]
    try:
        with engine.begin() as conn:
            statuses = _apply_all(conn, event_ids)
    except Exception as exc:  # a deadlock or a lost connection: one at a time instead
        log.warning(
            "a batch of %d events failed together (%s); applying them one by one",
            len(event_ids),
            exc,
            extra={"action": "event_batch_failed"},
        )
        statuses = {event_id: apply_event(engine, event_id) for event_id in event_ids}
    for request_id, event_id in new:
        by_status = outcomes[request_id].by_status
        status = statuses.get(event_id, "skipped")
        by_status[status] = by_status.get(status, 0) + 1
    with engine.begin() as conn:
        for request_id, outcome in outcomes.items():
            conn.execute(
                query(eq.FINISH_REQUEST, engine.dialect.name),
                {
                    "id": request_id,
                    "status": outcome.status,
                    "error": outcome.error and outcome.error[:ERROR_CHARS],
                },
            )
    return outcomes


def _apply_all(conn: Connection, event_ids: list[int]) -> dict[int, str]:
    """Match every event, then apply them in sub-task order (so two processors lock rows
    in the same order), each under a savepoint: one that fails is marked `error` alone.
    Each event's status afterwards."""
    dialect = conn.dialect.name
    statuses: dict[int, str] = {}
    matched = []
    for event_id in sorted(event_ids):
        event = conn.execute(query(eq.EVENT_TO_APPLY, dialect), {"id": event_id}).first()
        if event is None:
            continue
        found = match(conn, event)
        if found is None:
            _settle(conn, event_id, "unmatched")
            statuses[event_id] = "unmatched"
        else:
            matched.append((found.sub_task_id, event_id, found.strategy, event))
    for sub_task_id, event_id, strategy, event in sorted(matched, key=lambda m: (m[0], m[1])):
        try:
            with conn.begin_nested():
                _apply(conn, sub_task_id, event)
                _settle(conn, event_id, "applied", sub_task_id, strategy)
            statuses[event_id] = "applied"
        except Exception as exc:
            _settle_failed(conn, event_id, exc)
            statuses[event_id] = "error"
    return statuses
