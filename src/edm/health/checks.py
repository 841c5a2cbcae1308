"""Health checks: each looks at one thing that must hold and says, in one sentence a
person can act on, what is wrong.

Every check reads the database only (any instance sees what every instance wrote), so
`edm health`, `GET /health` and every process agree. A check that cannot run is itself
`critical`, naming why: a check that fails silently would hide exactly the outage it is
there to report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db.queries import SELECT_NOW, query

OK, WARN, CRITICAL = "ok", "warn", "critical"
SEVERITY = {OK: 0, WARN: 1, CRITICAL: 2}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # ok | warn | critical
    value: Any
    threshold: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(results: list[CheckResult]) -> str:
    """The overall status: the worst of the checks."""
    return max((r.status for r in results), key=SEVERITY.__getitem__, default=OK)


def run_checks(engine: Engine, settings: Settings) -> list[CheckResult]:
    """Every check, in a fixed order. The database check comes first; when the database
    cannot be reached the others are not tried."""
    database = _database(engine)
    if database.status == CRITICAL:
        return [database]
    results = [database]
    with engine.connect() as conn:
        now = float(conn.execute(query(SELECT_NOW, engine.dialect.name)).scalar_one())
        for check in CHECKS:
            try:
                results.append(check(conn, settings, now))
            except Exception as exc:  # noqa: BLE001 - reported as the check's own failure
                conn.rollback()
                name = check.__name__.lstrip("_")
                results.append(CheckResult(name, CRITICAL, None, "", f"the check failed: {exc}"))
    return results


def _at(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- the checks ----------------------------------------------------------------------------
def _database(engine: Engine) -> CheckResult:
    from edm.db.migrate import HEAD_REVISION, current_revision

    started = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(query(SELECT_NOW, engine.dialect.name))
        latency_ms = (time.perf_counter() - started) * 1000
        revision = current_revision(engine)
    except Exception as exc:  # noqa: BLE001 - an unreachable database is this check's answer
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        return CheckResult("database", CRITICAL, None, "reachable", f"unreachable: {reason}")
    if revision != HEAD_REVISION:
        return CheckResult(
            "database",
            CRITICAL,
            revision,
            f"schema at {HEAD_REVISION}",
            f"the schema is at {revision}, this edm expects {HEAD_REVISION}: run `edm db upgrade`",
        )
    return CheckResult(
        "database", OK, round(latency_ms, 1), "reachable", f"reachable in {latency_ms:.1f} ms"
    )


def _services_running(conn: Connection, settings: Settings, now: float) -> CheckResult:
    rows = conn.execute(query(hq.SERVICE_BEATS, conn.dialect.name)).all()
    live_after = now - settings.health_heartbeat_seconds
    dead = [row for row in rows if row.last_beat is None or row.last_beat < live_after]
    value = f"{len(rows) - len(dead)}/{len(rows)}"
    threshold = f"a heartbeat within {settings.health_heartbeat_seconds:g} s"
    if not dead:
        return CheckResult("services_running", OK, value, threshold, f"{value} services running")
    sentences = []
    for row in dead:
        error = row.worker_error or row.last_error
        sentence = (
            f"{row.name} has no live worker since {_at(row.last_beat)}"
            if row.last_beat is not None
            else f"{row.name} has no running worker"
        )
        sentences.append(sentence + (f"; last error: {error[:200]}" if error else ""))
    return CheckResult(
        "services_running",
        CRITICAL,
        value,
        threshold,
        f"{value} services running: "
        + "; ".join(sentences)
        + " (start `edm worker` or `edm serve`, or look at its log)",
    )


def _frozen_services(conn: Connection, settings: Settings, now: float) -> CheckResult:
    rows = conn.execute(query(hq.FROZEN_SERVICES, conn.dialect.name)).all()
    if not rows:
        return CheckResult("frozen_services", OK, 0, "none frozen", "no service is frozen")
    described = "; ".join(
        f"{row.name} is frozen since {_at(row.frozen_at)} ({row.frozen_reason or 'no reason'})"
        for row in rows
    )
    return CheckResult(
        "frozen_services",
        WARN,
        len(rows),
        "none frozen",
        f"{described}: fix the cause, then `edm service unfreeze NAME`",
    )


def _past_lease(conn: Connection, settings: Settings, now: float) -> CheckResult:
    grace = max(settings.maintenance_seconds, 1.0)
    row = conn.execute(query(hq.PAST_LEASE, conn.dialect.name), {"grace": grace}).one()
    rows = int(row.rows)
    threshold = (
        f"warn > 0, critical > {settings.health_lease_critical_rows}"
        f" or older than {_ago(settings.health_lease_critical_seconds)}"
    )
    if rows == 0:
        return CheckResult("past_lease", OK, 0, threshold, "no sub-task is past its lease")
    age = now - float(row.oldest)
    status = (
        CRITICAL
        if rows > settings.health_lease_critical_rows
        or age > settings.health_lease_critical_seconds
        else WARN
    )
    return CheckResult(
        "past_lease",
        status,
        rows,
        threshold,
        f"{rows} sub-tasks are past their lease (the oldest by {_ago(age)}): no reaper is"
        " taking them back; is any `edm worker` or `edm serve` running?",
    )


def _queue_age(conn: Connection, settings: Settings, now: float) -> CheckResult:
    rows = conn.execute(query(hq.QUEUE_AGE, conn.dialect.name)).all()
    threshold = (
        f"warn {_ago(settings.health_queue_warn_seconds)},"
        f" critical {_ago(settings.health_queue_critical_seconds)}"
    )
    waits = [
        (now - max(float(row.started), float(row.first_due), float(row.last_moved or 0)), row)
        for row in rows
    ]
    oldest = max((age for age, _ in waits), default=0.0)
    late = [(age, row) for age, row in waits if age > settings.health_queue_warn_seconds]
    if not late:
        return CheckResult(
            "queue_age", OK, round(oldest), threshold, "every running task's queue is moving"
        )
    status = CRITICAL if oldest > settings.health_queue_critical_seconds else WARN
    described = "; ".join(
        f"task {row.id} ({row.name}) has not moved for {_ago(age)}" for age, row in late
    )
    return CheckResult(
        "queue_age",
        status,
        round(oldest),
        threshold,
        f"{described}, though it has sub-tasks due that a usable service could send:"
        " see `edm task show`",
    )


def _unknown_outcomes(conn: Connection, settings: Settings, now: float) -> CheckResult:
    row = conn.execute(query(hq.UNKNOWN_OUTCOMES, conn.dialect.name)).one()
    rows = int(row.rows)
    threshold = f"warn when one is older than {_ago(settings.health_unknown_warn_seconds)}"
    if rows == 0:
        return CheckResult(
            "unknown_outcomes", OK, 0, threshold, "no sub-task has an unknown outcome"
        )
    age = now - float(row.oldest) if row.oldest is not None else 0.0
    status = WARN if age > settings.health_unknown_warn_seconds else OK
    return CheckResult(
        "unknown_outcomes",
        status,
        rows,
        threshold,
        f"{rows} sub-tasks have an unknown outcome, the oldest for {_ago(age)}: the"
        " reconciler settles them; a provider's webhook may settle them sooner",
    )


def _events(conn: Connection, settings: Settings, now: float) -> CheckResult:
    row = conn.execute(
        query(hq.EVENT_TROUBLE, conn.dialect.name),
        {
            "unmatched_age": settings.health_unmatched_warn_seconds,
            "window": settings.health_events_window_seconds,
        },
    ).one()
    counts = {
        "unmatched": int(row.unmatched),
        "error": int(row.errors),
        "invalid": int(row.invalid),
    }
    window = _ago(settings.health_events_window_seconds)
    threshold = (
        f"unmatched older than {_ago(settings.health_unmatched_warn_seconds)},"
        f" error or invalid within {window}: none"
    )
    if not any(counts.values()):
        return CheckResult("events", OK, counts, threshold, "every webhook event was applied")
    parts = []
    if counts["unmatched"]:
        parts.append(f"{counts['unmatched']} events still unmatched")
    if counts["error"]:
        parts.append(f"{counts['error']} events failed to apply in the last {window}")
    if counts["invalid"]:
        parts.append(
            f"{counts['invalid']} webhook requests could not be parsed in the last {window}"
        )
    return CheckResult(
        "events",
        WARN,
        counts,
        threshold,
        "; ".join(parts) + ": `edm events list --status unmatched|error|invalid`,"
        " then `edm events reprocess`",
    )


# What each invariant's violation means, for the sentence.
VIOLATIONS = {
    "leased_without_lease": "sub-tasks allocated or sending without a lease",
    "open_in_completed": "unfinished sub-tasks in completed tasks",
    "sent_without_attempt": "sent sub-tasks without a send attempt",
    "facts_not_from_events": "sub-tasks whose delivery facts differ from their applied events",
}


def _invariants(conn: Connection, settings: Settings, now: float) -> CheckResult:
    row = conn.execute(query(hq.INVARIANTS, conn.dialect.name)).one()
    counts = {name: int(getattr(row, name)) for name in VIOLATIONS}
    threshold = "no violation"
    broken = {name: n for name, n in counts.items() if n}
    if not broken:
        return CheckResult("invariants", OK, counts, threshold, "every invariant holds")
    described = "; ".join(f"{n} {VIOLATIONS[name]}" for name, n in broken.items())
    return CheckResult(
        "invariants",
        CRITICAL,
        counts,
        threshold,
        f"{described}: something changed the database outside edm's rules (a hand edit,"
        " a restore); see docs/architecture.md for what each fact means",
    )


CHECKS: tuple[Callable[[Connection, Settings, float], CheckResult], ...] = (
    _services_running,
    _frozen_services,
    _past_lease,
    _queue_age,
    _unknown_outcomes,
    _events,
    _invariants,
)
