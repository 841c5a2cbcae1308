"""Health checks: each looks at one thing that must hold and says, in one sentence a
person can act on, what is wrong.

Every check reads the database only (any instance sees what every instance wrote), so
`edm health`, `GET /health` and every process agree. A check that cannot run is itself
`critical`, naming why: a check that fails silently would hide exactly the outage it is
there to report.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db.queries import SELECT_NOW, query
from edm.health.cadence import WhileClean

OK, WARN, CRITICAL = "ok", "warn", "critical"
SEVERITY = {OK: 0, WARN: 1, CRITICAL: 2}

log = logging.getLogger(__name__)


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
    dialect = conn.dialect.name
    moving: list[float] = []  # ages of tasks the first look finds moving
    suspects: list[int] = []
    for row in conn.execute(query(hq.QUEUE_MOVES, dialect)):
        moved = max(float(row.started), float(row.last_sent or 0), float(row.last_other or 0))
        if now - moved > settings.health_queue_warn_seconds:
            suspects.append(row.id)
        else:
            moving.append(now - moved)
    rows = []
    if suspects:
        params = {"task_ids": suspects}
        rows = conn.execute(query(hq.QUEUE_AGE, dialect, "task_ids"), params).all()
    threshold = (
        f"warn {_ago(settings.health_queue_warn_seconds)},"
        f" critical {_ago(settings.health_queue_critical_seconds)}"
    )
    waits = [
        (now - max(float(row.started), float(row.first_due), float(row.last_moved or 0)), row)
        for row in rows
    ]
    oldest = max([age for age, _ in waits] + moving, default=0.0)
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


def _webhook_provider(provider: str, options: dict[str, Any] | str | None) -> str | None:
    """The webhook endpoint a service's provider posts its events to, if it posts any."""
    if isinstance(options, str):
        options = json.loads(options or "{}")
    if provider == "engagelab":
        return "engagelab"
    if provider == "sandbox" and (options or {}).get("events"):
        return "generic"
    return None  # SMTP has no tracking webhooks


def _webhook_silence(conn: Connection, settings: Settings, now: float) -> CheckResult:
    window, grace = settings.webhook_silence_seconds, settings.health_webhook_grace_seconds
    threshold = f"an event within {_ago(window)} of sending (after {_ago(grace)} of grace)"
    services = conn.execute(
        query(hq.SERVICES_SENT_SINCE, conn.dialect.name), {"since": now - window - grace}
    ).all()
    senders: dict[str, list[str]] = {}
    for service in services:
        webhook = _webhook_provider(service.provider, service.options)
        # Sent within the window, and long enough ago for its events to have come.
        if webhook and service.last_sent is not None and service.last_sent <= now - grace:
            senders.setdefault(webhook, []).append(service.name)
    silent: dict[str, float | None] = {}
    for webhook in senders:
        last = conn.execute(
            query(hq.LAST_WEBHOOK, conn.dialect.name), {"provider": webhook}
        ).scalar()
        if last is None or last < now - window:
            silent[webhook] = last
    value = {webhook: ("silent" if webhook in silent else "ok") for webhook in senders}
    if not silent:
        return CheckResult("webhook_silence", OK, value, threshold, "webhooks are coming in")
    described = "; ".join(
        f"no {webhook} webhook since {_at(last)} though {', '.join(senders[webhook])} sent"
        for webhook, last in silent.items()
    )
    return CheckResult(
        "webhook_silence",
        CRITICAL,
        value,
        threshold,
        f"{described}: check the webhook URL in the provider's console (`edm serve` prints"
        " it) and that `edm serve` is reachable from the internet",
    )


def _rated(
    description: str, rate: float, warn: float, critical: float, below: bool
) -> tuple[str, str] | None:
    """(status, description) when `rate` crosses a threshold (`below`: low is bad)."""
    crossed = (lambda limit: rate < limit) if below else (lambda limit: rate > limit)
    if crossed(critical):
        return CRITICAL, description
    if crossed(warn):
        return WARN, description
    return None


def _judged(
    name: str,
    value: Any,
    threshold: str,
    flags: list[tuple[str, str]],
    ok: str,
    advice: str,
) -> CheckResult:
    """`ok` when nothing is flagged; else the worst flag's status, every flag, the advice."""
    if not flags:
        return CheckResult(name, OK, value, threshold, ok)
    status = max((status for status, _ in flags), key=SEVERITY.__getitem__)
    described = "; ".join(text for _, text in flags)
    return CheckResult(name, status, value, threshold, f"{described}: {advice}")


def _send_success(conn: Connection, settings: Settings, now: float) -> CheckResult:
    window = settings.health_success_window_seconds
    threshold = (
        f"accepted / calls over {_ago(window)}: warn < {settings.health_success_warn:.0%},"
        f" critical < {settings.health_success_critical:.0%}"
        f" (at least {settings.health_success_min_calls} calls)"
    )
    rows = conn.execute(query(hq.SEND_OUTCOMES, conn.dialect.name), {"since": now - window}).all()
    value: dict[str, float] = {}
    flags: list[tuple[str, str]] = []
    for row in rows:
        rate = int(row.accepted) / int(row.calls)
        value[row.name] = round(rate, 4)
        if int(row.calls) < settings.health_success_min_calls:
            continue
        flag = _rated(
            f"{row.name} accepted {rate:.1%} of {row.calls} calls",
            rate,
            settings.health_success_warn,
            settings.health_success_critical,
            below=True,
        )
        if flag:
            flags.append(flag)
    return _judged(
        "send_success",
        value,
        threshold,
        flags,
        "providers accept what is sent",
        "`edm service list` shows each service's last error",
    )


@dataclass(frozen=True)
class Reputation:
    """One service's sender reputation over the window (since its last unfreeze, if later)."""

    service_id: int
    name: str
    sent: int
    hard_bounces: float  # of sent
    complaints: float  # of delivered
    flags: tuple[tuple[str, str], ...]  # (status, description) of each rate over a limit
    judged: bool  # enough sent to judge

    @property
    def status(self) -> str:
        return max((status for status, _ in self.flags), key=SEVERITY.__getitem__, default=OK)


def reputations(conn: Connection, settings: Settings, now: float) -> list[Reputation]:
    """Every unfrozen service that sent in the window; also what repair freezes by."""
    window = settings.health_reputation_window_seconds
    rows = conn.execute(
        query(hq.REPUTATION, conn.dialect.name),
        {"since": now - window, "settled": now - settings.health_reputation_settle_seconds},
    ).all()
    found = []
    for row in rows:
        sent, delivered = int(row.sent), int(row.delivered)
        bounces = int(row.hard_bounces) / sent
        complaints = int(row.complaints) / delivered if delivered else 0.0
        judged = sent >= settings.health_reputation_min_sent
        limits = (
            ("hard bounces", bounces, settings.health_bounce_warn, settings.health_bounce_critical),
            (
                "complaints",
                complaints,
                settings.health_complaint_warn,
                settings.health_complaint_critical,
            ),
        )
        flags = tuple(
            flag
            for what, rate, warn, critical in limits
            if judged
            and (
                flag := _rated(
                    f"{row.name}: {what} {rate:.1%} of {sent} sent", rate, warn, critical, False
                )
            )
        )
        found.append(Reputation(row.id, row.name, sent, bounces, complaints, flags, judged))
    return found


def _reputation(conn: Connection, settings: Settings, now: float) -> CheckResult:
    window = settings.health_reputation_window_seconds
    threshold = (
        f"over {_ago(window)}, at least {settings.health_reputation_min_sent} sent: hard bounces"
        f" / sent warn {settings.health_bounce_warn:.0%}, critical"
        f" {settings.health_bounce_critical:.0%}; complaints / delivered warn"
        f" {settings.health_complaint_warn:.1%}, critical {settings.health_complaint_critical:.1%}"
    )
    found = reputations(conn, settings, now)
    value = {
        r.name: {"hard_bounces": round(r.hard_bounces, 4), "complaints": round(r.complaints, 4)}
        for r in found
    }
    return _judged(
        "reputation",
        value,
        threshold,
        [flag for r in found for flag in r.flags],
        "bounces and complaints are low",
        "a list this bad can get a sending domain blocked; the repair loop freezes a service"
        f" that is critical for {_ago(settings.reputation_freeze_seconds)}; clean the list",
    )


# What each invariant's violation means, for the sentence.
VIOLATIONS = {
    "leased_without_lease": "sub-tasks allocated or sending without a lease",
    "open_in_completed": "unfinished sub-tasks in completed tasks",
    "sent_without_attempt": "sent sub-tasks without a send attempt",
    "facts_not_from_events": "sub-tasks whose delivery facts differ from their applied events",
    "suppressed_without_cause": "suppressed contacts with no event or operator action behind"
    " it (`edm contacts reactivate EMAIL` if it is wrong)",
    "funnels_not_kept": "tasks whose kept funnel differs from their sub-tasks' facts",
}


# Recounted once per EDM_HEALTH_INVARIANTS_SECONDS while they hold, every time while one
# is violated (`cadence.WhileClean`).
_INVARIANTS = WhileClean()


def _invariants(conn: Connection, settings: Settings, now: float) -> CheckResult:
    database = conn.engine.url.render_as_string()
    age = _INVARIANTS.clean_age(database)
    if age is not None and age < settings.health_invariants_seconds:
        return CheckResult(
            "invariants",
            OK,
            dict.fromkeys(VIOLATIONS, 0),
            "no violation",
            f"every invariant held when last recounted, {age:.0f} s ago",
        )
    result = recount_invariants(conn)
    _INVARIANTS.looked(database, clean=result.status == OK)
    return result


def recount_invariants(conn: Connection) -> CheckResult:
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
    _webhook_silence,
    _send_success,
    _reputation,
)


class CachedChecks:
    """The checks of one app, run at most once per `seconds` however often they are asked
    for (one run at a time: a caller meanwhile waits for it)."""

    def __init__(self, engine: Engine, settings: Settings, seconds: float) -> None:
        self.engine = engine
        self.settings = settings
        self.seconds = seconds
        self._lock = threading.Lock()
        self._results: list[CheckResult] = []
        self._at = float("-inf")
        self._changed = False

    def results(self) -> list[CheckResult]:
        with self._lock:
            if time.monotonic() - self._at >= self.seconds or not self._results:
                self._results = run_checks(self.engine, self.settings)
                self._at = time.monotonic()
            return self._results

    def recent(self) -> list[CheckResult]:
        """The last results at once, run again in the background when they are older than
        `seconds` (the first call waits for them). For pages that show the checks beside
        something else: on a large installation a run takes a second, which a page
        refreshed every few seconds should not pay each time."""
        if self._changed:  # run after the change, not a run that began before it
            self._changed = False
            with self._lock:
                self._results = run_checks(self.engine, self.settings)
                self._at = time.monotonic()
                return self._results
        if not self._results or self.seconds == 0:  # 0: no cache, always run now
            return self.results()
        last = self._results  # before a refresh that may end before this returns
        if time.monotonic() - self._at >= self.seconds and self._lock.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="health-checks", daemon=True).start()
        return last

    def changed(self) -> None:
        """Something the checks look at was just changed here (a service frozen from the
        console): the next `recent()` runs them again before it answers."""
        self._changed = True

    def _refresh(self) -> None:
        """Run in its own thread, holding the lock `recent` took."""
        try:
            self._results = run_checks(self.engine, self.settings)
            self._at = time.monotonic()
        except Exception:  # the database is down: the next call tries again
            log.exception("health checks failed")
        finally:
            self._lock.release()
