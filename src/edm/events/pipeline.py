"""From a logged webhook request to applied facts: parse → de-duplicate → match → apply.

Each step is named once here. The request is already in the event log (`intake`); a
request that cannot be parsed is marked `invalid` and kept. Each event is recorded once
(`events` is unique by provider and key; a repeat only counts), then matched and applied
in one transaction that also marks it `applied`, so nothing is ever half-applied. An
event that matches nothing is `unmatched` and tried again by upkeep; one whose apply
failed keeps the error and can be reprocessed.
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
    dialect = engine.dialect.name
    with engine.begin() as conn:
        claimed = conn.execute(
            query(eq.CLAIM_REQUEST, dialect), {"id": request_id, "stale": STALE_PROCESSING_SECONDS}
        ).first()
    if claimed is None:
        return RequestOutcome("skipped")
    try:
        parsed = _parse(claimed.provider, claimed.body)
    except WebhookParseError as exc:
        _finish(engine, request_id, "invalid", str(exc))
        log.info(
            "webhook request %s invalid: %s",
            request_id,
            exc,
            extra={"action": "webhook_invalid", "request_id": request_id},
        )
        return RequestOutcome("invalid", str(exc))
    outcome = RequestOutcome("processed", events=len(parsed))
    new_ids = _record(engine, request_id, claimed.provider, parsed, outcome)
    for event_id in new_ids:
        status = apply_event(engine, event_id)
        outcome.by_status[status] = outcome.by_status.get(status, 0) + 1
    ignored = len(parsed) - len(new_ids) - outcome.duplicates
    if ignored:
        outcome.by_status[IGNORED] = ignored
    _finish(engine, request_id, "processed", None)
    return outcome


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


def _record(
    engine: Engine,
    request_id: int,
    provider: str,
    parsed: list[ParsedEvent],
    outcome: RequestOutcome,
) -> list[int]:
    """Insert each fact once; the ids of the new ones that are to be applied."""
    with engine.begin() as conn:
        return _record_in(conn, [(request_id, provider, event) for event in parsed], outcome)


def _record_in(
    conn: Connection, items: list[tuple[int, str, ParsedEvent]], outcome: RequestOutcome
) -> list[int]:
    dialect = conn.dialect.name
    new_ids: list[int] = []
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
        if inserted is None:
            conn.execute(query(eq.COUNT_DUPLICATE, dialect), params)
            outcome.duplicates += 1
        elif event.event != IGNORED:
            new_ids.append(int(inserted))
    return new_ids


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


def _finish(engine: Engine, request_id: int, status: str, error: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            query(eq.FINISH_REQUEST, engine.dialect.name),
            {"id": request_id, "status": status, "error": error and error[:ERROR_CHARS]},
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
# How many logged requests one batch takes. Each step of a batch is one transaction for all
# its requests, which is what lets intake keep up on SQLite's single writer.
BATCH_REQUESTS = 100


def process_batch(engine: Engine, limit: int = BATCH_REQUESTS) -> int:
    """Process up to `limit` logged requests in four transactions: claim them, record
    their facts, apply those (each under a savepoint), mark the requests. Returns how
    many requests it took; 0 when none was waiting."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        claimed = conn.execute(query(eq.CLAIM_REQUESTS, dialect), {"limit": limit}).all()
    if not claimed:
        return 0
    items: list[tuple[int, str, ParsedEvent]] = []
    invalid: dict[int, str] = {}
    for request in claimed:
        try:
            items += [
                (request.id, request.provider, e) for e in _parse(request.provider, request.body)
            ]
        except WebhookParseError as exc:
            invalid[request.id] = str(exc)
    with engine.begin() as conn:
        new_ids = _record_in(conn, items, RequestOutcome("processed"))
    try:
        with engine.begin() as conn:
            _apply_all(conn, new_ids)
    except Exception as exc:  # a deadlock or a lost connection: one at a time instead
        log.warning(
            "a batch of %d events failed together (%s); applying them one by one",
            len(new_ids),
            exc,
            extra={"action": "event_batch_failed"},
        )
        for event_id in new_ids:
            apply_event(engine, event_id)
    with engine.begin() as conn:
        for request in claimed:
            error = invalid.get(request.id)
            conn.execute(
                query(eq.FINISH_REQUEST, dialect),
                {
                    "id": request.id,
                    "status": "invalid" if error else "processed",
                    "error": error and error[:ERROR_CHARS],
                },
            )
    return len(claimed)


def _apply_all(conn: Connection, event_ids: list[int]) -> None:
    """Match every event, then apply them in sub-task order (so two processors lock rows
    in the same order), each under a savepoint: one that fails is marked `error` alone."""
    dialect = conn.dialect.name
    matched = []
    for event_id in sorted(event_ids):
        event = conn.execute(query(eq.EVENT_TO_APPLY, dialect), {"id": event_id}).first()
        if event is None:
            continue
        found = match(conn, event)
        if found is None:
            _settle(conn, event_id, "unmatched")
        else:
            matched.append((found.sub_task_id, event_id, found.strategy, event))
    for sub_task_id, event_id, strategy, event in sorted(matched, key=lambda m: (m[0], m[1])):
        try:
            with conn.begin_nested():
                _apply(conn, sub_task_id, event)
                _settle(conn, event_id, "applied", sub_task_id, strategy)
        except Exception as exc:
            _settle_failed(conn, event_id, exc)
