"""Repair: what a machine can fix, fixed, each fix recorded.

Every step is safe in any number of processes at once: claims past their lease are
released and unknown outcomes settled by the upkeep's own statements, events retried,
delivery facts rewritten from the event log they derive from (idempotent), and a freeze
is set or lifted by one conditional UPDATE. Each repair that changed something is a row
of `repairs` (`edm repair --history`), a log line and a count in `edm_repairs_total`.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db import queries as q
from edm.db.queries import SELECT_NOW, query
from edm.funnels import keeping_funnels
from edm.health.cadence import WhileClean
from edm.health.checks import CRITICAL, reputations

log = logging.getLogger(__name__)

# Sub-tasks whose facts one run rewrites at most.
FACTS_PER_RUN = 10_000
# Tasks whose funnel one run counts again at most.
FUNNELS_PER_RUN = 100

INSTANCE = f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Repair:
    kind: str
    count: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair(
    engine: Engine, settings: Settings, *, dry_run: bool = False, instance: str = INSTANCE
) -> list[Repair]:
    """Every repair now (`edm repair`); with `dry_run`, what would be repaired."""
    if dry_run:
        return _would(engine, settings)
    from edm.scheduler.maintenance import UpkeepReport, reap, reconcile

    report = UpkeepReport()
    reap(engine, report, settings)
    reconcile(engine, report, settings)
    done = [
        *upkeep_repairs(report),
        _events(engine, settings),
        *scheduled(engine, settings, sweep=True),
    ]
    record(engine, done, instance)
    return done


def upkeep_repairs(report: Any) -> list[Repair]:
    """What an upkeep pass (`UpkeepReport`) repaired: leases taken back, unknown outcomes
    settled, events applied on retry."""
    released = report.reaped_allocated + report.reaped_sending + report.released_dead
    settled = report.resent_same_key + report.requeued_unknown + report.failed_unknown
    return [
        Repair(
            "past_lease",
            released,
            f"released: {report.reaped_allocated} back to pending, {report.reaped_sending} to"
            f" unknown (the reconciler settles them), {report.released_dead} of dead instances",
        ),
        Repair(
            "unknown",
            settled,
            f"unknown outcomes settled: {report.resent_same_key} resent with the same key,"
            f" {report.requeued_unknown} queued again, {report.failed_unknown} failed",
        ),
        Repair(
            "events",
            report.events_applied,
            f"events applied on retry; {report.events_given_up} unmatched for too long given up",
        ),
    ]


# The facts' and the funnels' repairs sweep the whole history: the loops run them once per
# EDM_HEALTH_INVARIANTS_SECONDS while they find nothing, at every repair while they do
# (`cadence.WhileClean`); `edm repair` always sweeps.
_SWEEPS = WhileClean()


def scheduled(engine: Engine, settings: Settings, *, sweep: bool | None = None) -> list[Repair]:
    """The repairs upkeep runs every EDM_REPAIR_SECONDS rather than every pass; the sweeps
    when `sweep`, or (None) when due."""
    database = engine.url.render_as_string()
    if sweep is None:
        sweep = _SWEEPS.due(database, settings.health_invariants_seconds)
    swept = [_facts(engine, dry_run=False), _funnels(engine, dry_run=False)] if sweep else []
    if sweep:
        _SWEEPS.looked(database, clean=not any(r.count for r in swept))
    return [
        *swept,
        _unfreeze_expired(engine, dry_run=False),
        _reputation_freeze(engine, settings, dry_run=False),
    ]


def record(engine: Engine, repairs: list[Repair], instance: str = INSTANCE) -> None:
    """Keep, log and count every repair that changed something."""
    from edm.health.metrics import REPAIRS

    done = [r for r in repairs if r.count]
    if not done:
        return
    with engine.begin() as conn:
        conn.execute(
            query(hq.RECORD_REPAIR, engine.dialect.name),
            [
                {"kind": r.kind, "count": r.count, "detail": r.detail, "instance": instance}
                for r in done
            ],
        )
    for r in done:
        REPAIRS.labels(r.kind).inc(r.count)
        log.warning(
            "repair %s (%d): %s",
            r.kind,
            r.count,
            r.detail,
            extra={"action": "repair", "kind": r.kind, "count": r.count},
        )


def history(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest recorded repairs, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(query(hq.REPAIR_HISTORY, engine.dialect.name), {"limit": limit}).all()
    return [dict(row._mapping) for row in rows]


def _would(engine: Engine, settings: Settings) -> list[Repair]:
    dialect = engine.dialect.name
    with engine.connect() as conn:
        past_lease = conn.execute(query(hq.PAST_LEASE, dialect), {"grace": 0}).one()
        unknown = conn.execute(query(hq.UNKNOWN_OUTCOMES, dialect)).one()
        events = conn.execute(query(hq.EVENTS_TO_RETRY_COUNT, dialect)).scalar()
    return [
        Repair("past_lease", int(past_lease.rows), "sub-tasks past their lease to release"),
        Repair("unknown", int(unknown.rows), "unknown outcomes the reconciler would look at"),
        Repair("events", int(events or 0), "unmatched or failed events to retry"),
        _facts(engine, dry_run=True),
        _funnels(engine, dry_run=True),
        _unfreeze_expired(engine, dry_run=True),
        _reputation_freeze(engine, settings, dry_run=True),
    ]


def _events(engine: Engine, settings: Settings) -> Repair:
    from edm.events.pipeline import retry_pending

    retried = retry_pending(
        engine, unmatched_retry_seconds=settings.unmatched_retry_seconds, min_age=0
    )
    return Repair(
        "events",
        retried.applied,
        f"applied on retry; {retried.given_up} unmatched for too long given up,"
        f" {retried.requests} logged requests processed",
    )


def _facts(engine: Engine, dry_run: bool) -> Repair:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        ids = list(
            conn.execute(query(hq.MISMATCHED_FACTS, dialect), {"limit": FACTS_PER_RUN}).scalars()
        )
        if ids and not dry_run:
            with keeping_funnels(conn, ids):
                conn.execute(query(hq.REDERIVE_FACTS, dialect, "ids"), {"ids": ids})
    shown = ", ".join(str(i) for i in ids[:20]) + (" ..." if len(ids) > 20 else "")
    verb = "would be set again" if dry_run else "set again"
    detail = (
        f"delivery facts of sub-tasks {shown} {verb} from their applied events"
        if ids
        else "every sub-task's delivery facts match its applied events"
    )
    return Repair("facts", len(ids), detail)


def _funnels(engine: Engine, dry_run: bool) -> Repair:
    """Tasks whose kept funnel (`edm.funnels`) is not what their sub-tasks say: counted
    again. After the facts' repair, so that it counts facts set right."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        ids = list(
            conn.execute(query(q.FUNNELS_NOT_KEPT, dialect), {"limit": FUNNELS_PER_RUN}).scalars()
        )
        if ids and not dry_run:
            for statement in q.RECOUNT_FUNNELS:
                conn.execute(query(statement, dialect, "ids"), {"ids": ids})
    shown = ", ".join(str(i) for i in ids)
    verb = "would be counted again" if dry_run else "counted again"
    detail = (
        f"funnels of tasks {shown} {verb} from their sub-tasks"
        if ids
        else "every task's kept funnel matches its sub-tasks"
    )
    return Repair("funnels", len(ids), detail)


def _unfreeze_expired(engine: Engine, dry_run: bool) -> Repair:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        names = list(conn.execute(query(hq.EXPIRED_FREEZES, dialect)).scalars())
        if names and not dry_run:
            conn.execute(query(hq.UNFREEZE_EXPIRED, dialect))
            from edm.db.notify import notify

            notify(conn, "services")
    verb = "would be unfrozen" if dry_run else "unfrozen"
    detail = f"{', '.join(names)} {verb}: the freeze's time is up" if names else "no freeze expired"
    return Repair("unfreeze", len(names), detail)


def _reputation_freeze(engine: Engine, settings: Settings, dry_run: bool) -> Repair:
    """Freeze each service whose sender reputation is critical, for
    EDM_REPUTATION_FREEZE_SECONDS, so a bad list cannot burn its sending domain; the rest of
    its tasks goes through the other services. The alert says how to undo it."""
    dialect = engine.dialect.name
    frozen: list[str] = []
    with engine.begin() as conn:
        now = float(conn.execute(query(SELECT_NOW, dialect)).scalar_one())
        for bad in (r for r in reputations(conn, settings, now) if r.status == CRITICAL):
            rates = "; ".join(text for status, text in bad.flags if status == CRITICAL)
            until = datetime.fromtimestamp(now + settings.reputation_freeze_seconds, UTC)
            reason = (
                f"sender reputation critical ({rates}): frozen by repair until"
                f" {until:%Y-%m-%d %H:%M} UTC"
            )
            if dry_run:
                frozen.append(f"{bad.name} ({rates})")
                continue
            changed = conn.execute(
                query(hq.FREEZE_FOR, dialect),
                {
                    "id": bad.service_id,
                    "reason": reason,
                    "seconds": settings.reputation_freeze_seconds,
                },
            ).rowcount
            if changed:
                frozen.append(f"{bad.name} ({rates})")
                from edm.health.alerts import notify_repair

                notify_repair(
                    conn,
                    settings,
                    check="reputation",
                    message=f"{bad.name} frozen for"
                    f" {settings.reputation_freeze_seconds / 60:.0f} min: {rates}. Its tasks go"
                    f" on through the other services. Clean the list; to send through it again"
                    f" now: `edm service unfreeze {bad.name}`",
                    now=now,
                )
        if frozen and not dry_run:
            from edm.db.notify import notify

            notify(conn, "services")
    verb = "would be frozen" if dry_run else "frozen"
    detail = (
        f"{'; '.join(frozen)} {verb} for {settings.reputation_freeze_seconds:g} s"
        if frozen
        else "no service's sender reputation is critical"
    )
    return Repair("reputation_freeze", len(frozen), detail)
