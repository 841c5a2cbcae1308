"""Upkeep that every instance runs, safely at once: reaper, reconciler, task states.

Nothing here needs a person or a script: expired leases come back by themselves, an
`unknown` outcome is settled by the task's delivery policy, and tasks complete when
no sub-task can change by sending any more.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

from edm.config import Settings, get_settings
from edm.db import queries as q
from edm.providers.base import OptionError
from edm.providers.registry import provider_class
from edm.scheduler.retry import backoff_seconds

log = logging.getLogger(__name__)


@dataclass
class UpkeepReport:
    released_dead: int = 0
    reaped_allocated: int = 0
    reaped_sending: int = 0
    resent_same_key: int = 0
    requeued_unknown: int = 0
    failed_unknown: int = 0
    skipped_suppressed: int = 0
    started: int = 0
    completed: int = 0
    requests_processed: int = 0
    events_applied: int = 0
    events_given_up: int = 0
    facts_repaired: int = 0
    notes: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return any(v for k, v in vars(self).items() if k != "notes")


def reap(engine: Engine, report: UpkeepReport, settings: Settings | None = None) -> None:
    """Expired `allocated` rows go back to `pending`; expired `sending` ones become `unknown`.

    Claims of an instance whose heartbeat stopped come back the same way without waiting
    for their leases.
    """
    settings = settings or get_settings()
    dialect = engine.dialect.name
    with engine.begin() as conn:
        report.released_dead += conn.execute(
            q.query(q.RELEASE_DEAD_INSTANCES, dialect),
            {
                "dead_seconds": settings.instance_dead_seconds,
                "reason": "its instance stopped while sending: outcome unknown",
            },
        ).rowcount
        report.reaped_allocated += conn.execute(q.query(q.REAP_ALLOCATED, dialect)).rowcount
        report.reaped_sending += conn.execute(q.query(q.REAP_SENDING, dialect)).rowcount
        conn.execute(q.query(q.FORGET_OLD_HEARTBEATS, dialect))


def reconcile(
    engine: Engine, report: UpkeepReport, settings: Settings | None = None, limit: int = 500
) -> None:
    """Settle `unknown` rows: same-key resend where the provider dedups, else by policy."""
    settings = settings or get_settings()
    dialect = engine.dialect.name
    with engine.begin() as conn:
        now = float(conn.execute(q.query(q.SELECT_NOW, dialect)).scalar_one())
        services = {row.id: row for row in conn.execute(q.query(q.SERVICES, dialect))}
        for row in conn.execute(q.query(q.UNKNOWN_ROWS, dialect), {"limit": limit}).all():
            delay = backoff_seconds(
                row.attempts, settings.retry_base_seconds, settings.retry_max_seconds
            )
            action, reason = _decide(row, services.get(row.service_id), now, delay, settings)
            statement = {
                "resend": q.RESEND_SAME_KEY,
                "requeue": q.REQUEUE_UNKNOWN,
                "fail": q.FAIL_UNKNOWN,
            }[action]
            params = {"id": row.id, "delay": delay, "reason": reason}
            if conn.execute(q.query(statement, dialect), params).rowcount:
                if action == "resend":
                    report.resent_same_key += 1
                elif action == "requeue":
                    report.requeued_unknown += 1
                else:
                    report.failed_unknown += 1


def _decide(
    row,
    service,
    now: float,
    delay: float,  # type: ignore[no-untyped-def]
    settings: Settings,
) -> tuple[str, str]:
    if row.task_status == "cancelled":
        return "fail", "unknown_outcome"
    if row.attempts >= settings.max_attempts:
        return "fail", f"unknown_outcome after {row.attempts} attempts"
    usable = service is not None and service.enabled and not service.frozen
    if usable:
        try:
            window = provider_class(service.provider).idempotency_window
        except OptionError:
            window = None
        # The resend must reach the provider while it still remembers the first call.
        resend_by = now + delay + settings.lease_seconds
        if window is not None and resend_by < (row.first_sending_at or now) + window:
            return "resend", ""
    if row.delivery_policy == "at_least_once":
        return "requeue", ""
    return "fail", "unknown_outcome"


def upkeep_tasks(engine: Engine, report: UpkeepReport) -> None:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        report.started += conn.execute(q.query(q.START_SCHEDULED, dialect)).rowcount
        report.skipped_suppressed += conn.execute(q.query(q.SKIP_SUPPRESSED, dialect)).rowcount
        report.completed += conn.execute(q.query(q.COMPLETE_TASKS, dialect)).rowcount


def retry_events(engine: Engine, report: UpkeepReport, settings: Settings | None = None) -> None:
    """Webhook requests never processed, events still unmatched or never applied."""
    from edm.events.pipeline import retry_pending

    settings = settings or get_settings()
    retried = retry_pending(engine, unmatched_retry_seconds=settings.unmatched_retry_seconds)
    report.events_applied += retried.applied
    report.events_given_up += retried.given_up
    report.requests_processed += retried.requests


def run_upkeep(
    engine: Engine, settings: Settings | None = None, *, repair: bool = False
) -> UpkeepReport:
    """One pass; with `repair`, also the repairs upkeep does not do every pass (delivery
    facts set again from the event log, freezes lifted or set). What it repaired is
    recorded (`edm repair --history`)."""
    report = UpkeepReport()
    reap(engine, report, settings)
    reconcile(engine, report, settings)
    retry_events(engine, report, settings)
    upkeep_tasks(engine, report)
    from edm.health import repair as repairs

    done = repairs.upkeep_repairs(report)
    if repair:
        scheduled = repairs.scheduled(engine, settings or get_settings())
        report.facts_repaired = next((r.count for r in scheduled if r.kind == "facts"), 0)
        done += scheduled
    repairs.record(engine, done)
    if report.changed():
        log.info("upkeep: %s", {k: v for k, v in vars(report).items() if v and k != "notes"})
    return report


class RepairTimer:
    """Whether this process's repair is due: every `seconds` (EDM_REPAIR_SECONDS), the
    first at once. Each process keeps its own; the repairs are safe to run together."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


def work_left(engine: Engine) -> int:
    """Running or scheduled tasks that still have a sub-task that can change by sending."""
    with engine.connect() as conn:
        return int(conn.execute(q.query(q.RUNNING_WORK_LEFT, engine.dialect.name)).scalar_one())
