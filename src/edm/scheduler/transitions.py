"""Sub-task writes after the claim, each fenced by the claim's lease token.

A write whose fence no longer matches (the lease ran out and another claim took the
row) changes nothing; the provider's real answer is still kept in `send_attempts`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from edm.config import Settings
from edm.db import queries as q
from edm.scheduler.retry import backoff_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settle:
    """A claimed row settled before any call: skipped (suppressed) or failed (template)."""

    id: int
    status: str
    error: str
    error_class: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one provider call came to."""

    sub_task_id: int
    attempts: int
    kind: str  # sent | transient | recipient | request | service | unknown
    started_at: float
    message_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Refund:
    """Pace slots and quota units a claim took for rows that were never sent."""

    service_id: int
    slots: int
    interval: float
    pace_end: float  # the pace row's next_send_at as the claim left it
    quota_day: str


def settle_unsent(
    engine: Engine,
    token: str,
    settles: list[Settle],
    refund: Refund,
    pause_tasks: dict[int, str] | None = None,
) -> None:
    """Settle rows that fail before any call, give back what their claim spent on them,
    and pause the tasks whose templates keep failing (task id -> reason)."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        settled = 0
        for settle in settles:
            settled += conn.execute(
                q.query(q.SETTLE_ALLOCATED, dialect),
                {
                    "id": settle.id,
                    "token": token,
                    "status": settle.status,
                    "error": settle.error,
                    "error_class": settle.error_class,
                },
            ).rowcount
        if settled:
            conn.execute(
                q.query(q.REFUND_PACE, dialect),
                {
                    "service_id": refund.service_id,
                    "pace_end": refund.pace_end,
                    "seconds": settled * refund.interval,
                },
            )
            conn.execute(
                q.query(q.REFUND_QUOTA, dialect),
                {"service_id": refund.service_id, "n": settled, "quota_day": refund.quota_day},
            )
        for task_id, reason in (pause_tasks or {}).items():
            conn.execute(
                q.query(q.PAUSE_TASK_WITH_REASON, dialect), {"task_id": task_id, "reason": reason}
            )


def mark_sending(
    engine: Engine, token: str, ids: list[int], lease_seconds: float
) -> dict[int, int]:
    """Commit `sending` before the call; return {id: attempts} of the rows that may be sent.

    Rows that may not be sent now (task no longer running) are released to `pending`
    in the same transaction.
    """
    if not ids:
        return {}
    dialect = engine.dialect.name
    with engine.begin() as conn:
        sending = {
            row.id: row.attempts
            for row in conn.execute(
                q.query(q.MARK_SENDING, dialect, "ids"),
                {"ids": ids, "token": token, "lease_seconds": lease_seconds},
            )
        }
        rest = [i for i in ids if i not in sending]
        if rest:
            conn.execute(q.query(q.RELEASE, dialect, "ids"), {"ids": rest, "token": token})
    return sending


def release(engine: Engine, token: str, ids: list[int]) -> None:
    if ids:
        with engine.begin() as conn:
            conn.execute(
                q.query(q.RELEASE, engine.dialect.name, "ids"), {"ids": ids, "token": token}
            )


def record_outcomes(
    engine: Engine, service_id: int, token: str, outcomes: list[Outcome], settings: Settings
) -> None:
    """Apply the results of a group of calls in one transaction."""
    dialect = engine.dialect.name
    attempts_log = []
    sent = [o for o in outcomes if o.kind == "sent"]
    with engine.begin() as conn:
        applied = _mark_sent(conn, dialect, token, sent)
        for outcome in outcomes:
            if outcome.kind != "sent":
                statement, params = _transition(outcome, settings)
                params.update(id=outcome.sub_task_id, token=token)
                if conn.execute(q.query(statement, dialect), params).rowcount == 1:
                    applied.add(outcome.sub_task_id)
                    if outcome.kind == "recipient":
                        conn.execute(
                            q.query(q.MARK_CONTACT_INVALID, dialect),
                            {"sub_task_id": outcome.sub_task_id, "reason": outcome.error},
                        )
            fenced = outcome.sub_task_id not in applied
            if fenced:
                log.warning(
                    "sub-task %s: lease taken over, %s outcome kept in send_attempts only",
                    outcome.sub_task_id,
                    outcome.kind,
                )
            attempts_log.append(
                {
                    "sub_task_id": outcome.sub_task_id,
                    "started_at": outcome.started_at,
                    "outcome": outcome.kind,
                    "message_id": outcome.message_id,
                    "error": outcome.error,
                    "fenced": fenced,
                }
            )
        if attempts_log:
            conn.execute(
                q.query(q.LOG_ATTEMPTS_MANY, dialect),
                {"rows": json.dumps(attempts_log), "service_id": service_id, "token": token},
            )
        service_errors = [o for o in outcomes if o.kind == "service"]
        if service_errors:
            conn.execute(
                q.query(q.FREEZE_SERVICE, dialect),
                {"service_id": service_id, "reason": service_errors[0].error},
            )
        retry_after = max((o.retry_after or 0.0) for o in outcomes)
        if retry_after > 0:
            conn.execute(
                q.query(q.PAUSE_SERVICE, dialect),
                {"service_id": service_id, "seconds": retry_after},
            )


def _mark_sent(conn: Connection, dialect: str, token: str, sent: list[Outcome]) -> set[int]:
    """One statement for every `sent` outcome of the group; the ids whose fence held."""
    if not sent:
        return set()
    rows = json.dumps([{"id": o.sub_task_id, "message_id": o.message_id} for o in sent])
    result = conn.execute(q.query(q.MARK_SENT_MANY, dialect), {"rows": rows, "token": token})
    return {row[0] for row in result}


def _transition(outcome: Outcome, settings: Settings) -> tuple[dict[str, str], dict]:
    if outcome.kind == "unknown":
        return q.MARK_UNKNOWN, {"error": outcome.error}
    if outcome.kind in ("recipient", "request"):
        return q.MARK_FINAL, {
            "status": "failed",
            "error": outcome.error,
            "error_class": outcome.kind,
        }
    if outcome.kind == "service":
        # Not the sub-task's fault: back to the pool at once, the attempt not counted.
        return q.MARK_RETRY, {
            "delay": 0.0,
            "refund": 1,
            "error": outcome.error,
            "error_class": "service",
        }
    if outcome.attempts >= settings.max_attempts:
        return q.MARK_FINAL, {
            "status": "failed",
            "error": f"attempts exhausted ({outcome.attempts}): {outcome.error}",
            "error_class": "transient",
        }
    delay = backoff_seconds(
        outcome.attempts, settings.retry_base_seconds, settings.retry_max_seconds
    )
    delay = max(delay, outcome.retry_after or 0.0)
    return q.MARK_RETRY, {
        "delay": delay,
        "refund": 0,
        "error": outcome.error,
        "error_class": "transient",
    }
