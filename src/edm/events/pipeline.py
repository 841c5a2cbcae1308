"""From a logged webhook request to applied facts: parse → de-duplicate → match → apply.

Each step is named once here. The request is already in the event log (`intake`); a
request that cannot be parsed is marked `invalid` and kept. Each event is recorded once
(`events` is unique by provider and key; a repeat only counts), then matched and applied
together with its `applied` mark, so nothing is ever half-applied; a batch of events costs
a few statements, not a few per event. Requests go through one path, whether a
batch of them (`process_batch`, the serving process's processor) or one (`process_request`,
upkeep's retry): claim, record, apply, finish. An event that matches nothing is
`unmatched` and tried again by upkeep; one whose apply failed keeps the error and can be
reprocessed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from edm.config import get_settings
from edm.db import event_queries as eq
from edm.db.queries import query
from edm.events.apply import Fact, SoftBounceLimit, apply_facts
from edm.events.matching import match_events
from edm.events.parsers.base import IGNORED, ParsedEvent, WebhookParseError, decode_json
from edm.events.parsers.registry import parser_for
from edm.health.metrics import count_events

log = logging.getLogger(__name__)

# A request still `processing` after this long was left by a process that stopped.
STALE_PROCESSING_SECONDS = 60.0
# How many logged requests one batch takes. Each step of a batch is one transaction for all
# its requests, which is what lets intake keep up on SQLite's single writer.
BATCH_REQUESTS = 100
# Rows per INSERT of new facts, and events per apply transaction (bounds what one failure
# sends back to be applied one by one).
INSERT_ROWS = 500
APPLY_EVENTS = 500
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
    conn: Connection,
    items: list[tuple[int, str, ParsedEvent]],
    outcomes: dict[int, RequestOutcome],
    kinds: dict[int, tuple[str, str]],
) -> list[tuple[int, int]]:
    """Insert each fact once; (request id, event id) of the new ones that are to be applied,
    with each one's (provider, event) put in `kinds`. A repeat, in this batch or of a stored
    fact, is counted on the event and in its request's outcome."""
    first: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    repeats: list[tuple[int, dict[str, Any]]] = []
    # In key order, so two batches holding the same facts lock them in the same order.
    for request_id, provider, event in sorted(items, key=lambda i: (i[1], i[2].dedupe_key)):
        row = _event_row(request_id, provider, event)
        key = (provider, event.dedupe_key)
        if key in first:
            repeats.append((request_id, row))
        else:
            first[key] = (request_id, row)
    inserted = insert_facts(conn, [row for _, row in first.values()])
    new: list[tuple[int, int]] = []
    for key, (request_id, row) in first.items():
        if key not in inserted:
            repeats.append((request_id, row))
        elif row["status"] == IGNORED:
            by_status = outcomes[request_id].by_status
            by_status[IGNORED] = by_status.get(IGNORED, 0) + 1
            count_events(row["provider"], row["event"], IGNORED)
        else:
            new.append((request_id, inserted[key]))
            kinds[inserted[key]] = (row["provider"], row["event"])
    repeats.sort(key=lambda repeat: (repeat[1]["provider"], repeat[1]["dedupe_key"]))
    if repeats:
        conn.execute(
            query(eq.COUNT_DUPLICATE, conn.dialect.name),
            [{"provider": r["provider"], "dedupe_key": r["dedupe_key"]} for _, r in repeats],
        )
    for request_id, repeat in repeats:
        outcomes[request_id].duplicates += 1
        count_events(repeat["provider"], repeat["event"], "duplicate")
    return new


def _event_row(request_id: int | None, provider: str, event: ParsedEvent) -> dict[str, Any]:
    return {
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
        "data": event.data,
    }


def insert_facts(conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Insert event rows whose (provider, key) are distinct; the id of each that was new,
    by (provider, key). A fact already stored is left as it is."""
    inserted: dict[tuple[str, str], int] = {}
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = json.dumps(rows[start : start + INSERT_ROWS], allow_nan=False)
        for new in conn.execute(query(eq.INSERT_EVENTS, conn.dialect.name), {"rows": chunk}):
            inserted[(new.provider, new.dedupe_key)] = int(new.id)
    return inserted


def apply_event(engine: Engine, event_id: int) -> str:
    """Match and apply one recorded event; its status afterwards.

    `skipped` when the event is not waiting (already applied, or another process has it).
    """
    try:
        with engine.begin() as conn:
            status = _apply_all(conn, [event_id]).get(event_id, "skipped")
    except Exception as exc:  # the raw event stays, with the error, to be reprocessed
        with engine.begin() as conn:
            _settle_failed(conn, event_id, exc)
        return "error"
    log.debug("event %s: %s", event_id, status, extra={"action": "event_" + status})
    return status


def _settle_failed(conn: Connection, event_id: int, exc: Exception) -> None:
    error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    log.warning(
        "event %s could not be applied: %s",
        event_id,
        error,
        extra={"action": "event_error", "event_id": event_id},
    )
    _settle(conn, [_settlement(event_id, "error", error=error)])


def _settlement(
    event_id: int,
    status: str,
    sub_task_id: int | None = None,
    matched_by: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "status": status,
        "applied": status == "applied",
        "sub_task_id": sub_task_id,
        "matched_by": matched_by,
        "error": error,
    }


def _settle(conn: Connection, settlements: list[dict[str, Any]]) -> None:
    if settlements:
        conn.execute(query(eq.SETTLE_EVENT, conn.dialect.name), settlements)


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
    statuses = apply_events(engine, event_ids)
    report.applied = sum(status == "applied" for status in statuses.values())
    return report


def reprocess(engine: Engine, event_ids: list[int]) -> dict[str, int]:
    """An operator's retry of events that are unmatched, failed or given up."""
    counts: dict[str, int] = {}
    for start in range(0, len(event_ids), APPLY_EVENTS):
        chunk = event_ids[start : start + APPLY_EVENTS]
        with engine.begin() as conn:
            conn.execute(query(eq.REOPEN_EVENTS, engine.dialect.name, "ids"), {"ids": chunk})
        statuses = apply_events(engine, chunk)
        for event_id in chunk:
            status = statuses.get(event_id, "skipped")
            counts[status] = counts.get(status, 0) + 1
    return counts


def apply_events(engine: Engine, event_ids: list[int]) -> dict[int, str]:
    """Match and apply recorded events, many per transaction; each one's status (an id
    missing from it was not waiting). A transaction that fails (a deadlock, a lost
    connection, one event that cannot be applied) is applied again event by event, so a
    bad event is marked `error` alone."""
    statuses: dict[int, str] = {}
    for start in range(0, len(event_ids), APPLY_EVENTS):
        chunk = event_ids[start : start + APPLY_EVENTS]
        try:
            with engine.begin() as conn:
                statuses.update(_apply_all(conn, chunk))
        except Exception as exc:
            log.warning(
                "a batch of %d events failed together (%s); applying them one by one",
                len(chunk),
                exc,
                extra={"action": "event_batch_failed"},
            )
            statuses.update({event_id: apply_event(engine, event_id) for event_id in chunk})
    return statuses


# -- many requests at once -------------------------------------------------------------------
class BatchFailed(Exception):
    """Processing claimed requests failed: `request_ids` are left `processing`."""

    def __init__(self, request_ids: list[int]) -> None:
        super().__init__(f"{len(request_ids)} claimed webhook requests not processed")
        self.request_ids = request_ids


def process_batch(engine: Engine, limit: int = BATCH_REQUESTS) -> int:
    """Process up to `limit` logged requests; how many it took (0: none was waiting)."""
    with engine.begin() as conn:
        claimed = conn.execute(
            query(eq.CLAIM_REQUESTS, engine.dialect.name), {"limit": limit}
        ).all()
    if claimed:
        try:
            _process_claimed(engine, [(r.id, r.provider, r.body) for r in claimed])
        except Exception as exc:
            raise BatchFailed([r.id for r in claimed]) from exc
    return len(claimed)


def release_requests(engine: Engine, request_ids: list[int]) -> None:
    """Claimed requests whose batch failed wait to be processed again."""
    with engine.begin() as conn:
        conn.execute(query(eq.RELEASE_REQUESTS, engine.dialect.name, "ids"), {"ids": request_ids})


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
            count_events(provider, "unparsed", "invalid")
            log.info(
                "webhook request %s invalid: %s",
                request_id,
                exc,
                extra={"action": "webhook_invalid", "request_id": request_id},
            )
            continue
        outcomes[request_id] = RequestOutcome("processed", events=len(parsed))
        items += [(request_id, provider, event) for event in parsed]
    kinds: dict[int, tuple[str, str]] = {}
    with engine.begin() as conn:
        new = _record_in(conn, items, outcomes, kinds)
    event_ids = [event_id for _, event_id in new]
    statuses = apply_events(engine, event_ids)
    for request_id, event_id in new:
        by_status = outcomes[request_id].by_status
        status = statuses.get(event_id, "skipped")
        by_status[status] = by_status.get(status, 0) + 1
        count_events(*kinds[event_id], status)
    with engine.begin() as conn:
        conn.execute(
            query(eq.FINISH_REQUEST, engine.dialect.name),
            [
                {
                    "id": request_id,
                    "status": outcome.status,
                    "error": outcome.error and outcome.error[:ERROR_CHARS],
                }
                for request_id, outcome in outcomes.items()
            ],
        )
    return outcomes


def _apply_all(conn: Connection, event_ids: list[int]) -> dict[int, str]:
    """Lock the events still waiting among `event_ids`, match them, mark them, then apply
    their facts, all in the caller's transaction: a failure leaves none of them applied.
    Each event's status afterwards (an id missing from it was not waiting)."""
    dialect = conn.dialect.name
    events = conn.execute(query(eq.EVENTS_TO_APPLY, dialect, "ids"), {"ids": event_ids}).all()
    if not events:
        return {}
    found = match_events(conn, events)
    if found:
        sub_task_ids = sorted({match.sub_task_id for match in found.values()})
        conn.execute(query(eq.LOCK_SUB_TASKS, dialect, "ids"), {"ids": sub_task_ids})
    _settle(
        conn,
        [
            _settlement(e.id, "applied", found[e.id].sub_task_id, found[e.id].strategy)
            if e.id in found
            else _settlement(e.id, "unmatched")
            for e in events
        ],
    )
    settings = get_settings()
    apply_facts(
        conn,
        [
            Fact(
                found[e.id].sub_task_id,
                e.event,
                e.occurred_at,
                e.provider_message_id,
                e.data if isinstance(e.data, dict) else json.loads(e.data or "{}"),
            )
            for e in events
            if e.id in found
        ],
        SoftBounceLimit(settings.soft_bounce_limit, settings.soft_bounce_days),
    )
    return {e.id: "applied" if e.id in found else "unmatched" for e in events}
