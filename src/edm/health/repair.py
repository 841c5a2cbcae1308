"""`edm repair`: what a machine can fix, fixed now, each fix reported.

Safe to run in any number of processes at once: every step is the upkeep's own (claims
past their lease released, events retried) or an idempotent rewrite of facts from the
event log, the source they derive from.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db.queries import query

log = logging.getLogger(__name__)

# Sub-tasks whose facts one run rewrites at most.
FACTS_PER_RUN = 10_000


@dataclass(frozen=True)
class Repair:
    kind: str
    count: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair(engine: Engine, settings: Settings, *, dry_run: bool = False) -> list[Repair]:
    """Every repair; with `dry_run`, what would be repaired, changing nothing."""
    return [
        _past_lease(engine, settings, dry_run),
        _events(engine, settings, dry_run),
        _facts(engine, dry_run),
    ]


def _past_lease(engine: Engine, settings: Settings, dry_run: bool) -> Repair:
    from edm.scheduler.maintenance import UpkeepReport, reap

    with engine.connect() as conn:
        waiting = conn.execute(query(hq.PAST_LEASE, engine.dialect.name), {"grace": 0}).one()
    if dry_run:
        return Repair("past_lease", int(waiting.rows), "sub-tasks past their lease to release")
    report = UpkeepReport()
    reap(engine, report, settings)
    released = report.reaped_allocated + report.reaped_sending + report.released_dead
    return Repair(
        "past_lease",
        released,
        f"released: {report.reaped_allocated} back to pending, {report.reaped_sending} to"
        f" unknown (the reconciler settles them), {report.released_dead} of dead instances",
    )


def _events(engine: Engine, settings: Settings, dry_run: bool) -> Repair:
    from edm.events.pipeline import retry_pending

    if dry_run:
        with engine.connect() as conn:
            waiting = conn.execute(query(hq.EVENTS_TO_RETRY_COUNT, engine.dialect.name)).scalar()
        return Repair("events", int(waiting or 0), "unmatched or failed events to retry")
    retried = retry_pending(
        engine, unmatched_retry_seconds=settings.unmatched_retry_seconds, min_age=0
    )
    return Repair(
        "events",
        retried.applied,
        f"applied on retry; {retried.given_up} unmatched for too long given up,"
        f" {retried.requests} logged requests processed",
    )


def repair_facts(engine: Engine) -> Repair:
    """The facts repair alone (upkeep's, every EDM_REPAIR_SECONDS), logged when it fixed
    something."""
    done = _facts(engine, dry_run=False)
    if done.count:
        log.warning(
            "repair: %s",
            done.detail,
            extra={"action": "repair", "kind": "facts", "count": done.count},
        )
    return done


def _facts(engine: Engine, dry_run: bool) -> Repair:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        ids = list(
            conn.execute(query(hq.MISMATCHED_FACTS, dialect), {"limit": FACTS_PER_RUN}).scalars()
        )
        if ids and not dry_run:
            conn.execute(query(hq.REDERIVE_FACTS, dialect, "ids"), {"ids": ids})
    shown = ", ".join(str(i) for i in ids[:20]) + (" ..." if len(ids) > 20 else "")
    verb = "would be set again" if dry_run else "set again"
    detail = (
        f"delivery facts of sub-tasks {shown} {verb} from their applied events"
        if ids
        else "every sub-task's delivery facts match its applied events"
    )
    return Repair("facts", len(ids), detail)
