"""`edm diagnose`: why a task is not finishing, on one screen, with the commands that fix it.

The health checks each watch one thing across the installation; a diagnosis starts from
a task (or from every task that can still send) and follows what it waits for: its
status, the services it may use, their workers, pace, quota and freezes, its sub-tasks
past their lease or of unknown outcome. It reads only, and measures every age against
one reading of the database's clock, so it says the same thing from any machine.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, Row

from edm.config import Settings
from edm.db import diagnose_queries as dq
from edm.db import queries as q
from edm.health.checks import OK, CheckResult, run_checks
from edm.scheduler.pace import next_utc_midnight, utc_day
from edm.task_views import TaskNotFound

CRITICAL, WARN, INFO = "critical", "warn", "info"
RANK = {CRITICAL: 0, WARN: 1, INFO: 2}

# The measured pace and the task's recent sends look this far back.
PACE_WINDOW_SECONDS = 600.0
# Sub-task statuses that can still change by sending; those left to send.
ACTIVE = ("pending", "allocated", "sending", "unknown")
LEFT = ("pending", "allocated", "sending")
FINISHED = ("sent", "failed", "skipped", "cancelled")
STATUS_ORDER = ("pending", "allocated", "sending", "unknown", *FINISHED)
# The worker command comes after the service fixes it needs.
START_WORKER = "edm worker"


# -- what a diagnosis holds ----------------------------------------------------------------
@dataclass(frozen=True)
class StatusAge:
    """Sub-tasks in one status, and the one that has been in it longest."""

    status: str
    count: int
    oldest_id: int | None
    oldest_since: float | None
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    percent: float


@dataclass(frozen=True)
class TaskReport:
    id: int
    name: str
    status: str
    status_reason: str | None
    delivery_policy: str
    priority: int
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    completed_at: float | None
    services: list[str]  # the services it may use (every one when it lists none)
    progress: Progress
    funnel: dict[str, int]
    sub_tasks: list[StatusAge]
    pinned: dict[str, int]  # pending sub-tasks pinned to each service
    past_lease: int
    past_lease_oldest_seconds: float | None  # how long the oldest lease is over
    waiting_retry: int
    next_retry_at: float | None
    sent_recently: int  # within PACE_WINDOW_SECONDS
    rate_per_minute: float | None
    minutes_left: float | None

    def count(self, *statuses: str) -> int:
        return sum(s.count for s in self.sub_tasks if s.status in statuses)

    def oldest(self, status: str) -> StatusAge | None:
        return next((s for s in self.sub_tasks if s.status == status), None)


@dataclass(frozen=True)
class ServiceReport:
    id: int
    name: str
    provider: str
    enabled: bool
    frozen: bool
    frozen_reason: str | None
    frozen_at: float | None
    frozen_until: float | None  # a freeze the repair loop lifts by itself then
    usable: bool  # enabled and not frozen
    paused_until: float | None  # a provider's back-pressure still in force
    live_workers: int
    last_beat: float | None
    interval_seconds: float
    measured_seconds_per_email: float | None
    sent_recently: int  # accepted calls within PACE_WINDOW_SECONDS
    last_sent_at: float | None
    daily_quota: int | None
    quota_used: int
    quota_left: int | None
    quota_resets_at: float | None
    last_error: str | None
    last_error_at: float | None
    sent: int  # sub-tasks of the diagnosed tasks it sent
    pinned_pending: int  # pending sub-tasks of those tasks only it may send


@dataclass(frozen=True)
class EventCount:
    event: str
    status: str
    count: int


@dataclass(frozen=True)
class LastEvent:
    id: int
    provider: str
    event: str
    status: str
    occurred_at: float
    received_at: float
    sub_task_id: int | None


@dataclass(frozen=True)
class EventsReport:
    since: float | None  # None: every event of the task
    counts: list[EventCount]
    last: LastEvent | None


@dataclass(frozen=True)
class Finding:
    """One line of the verdict: what is wrong (or right), and the commands that fix it,
    to be run in order as written."""

    severity: str  # critical | warn | info
    code: str
    message: str
    commands: list[str] = field(default_factory=list)
    task_id: int | None = None
    services: list[str] = field(default_factory=list)  # the services it is about


@dataclass(frozen=True)
class Diagnosis:
    scope: str  # task | installation
    task_id: int | None
    now: float
    tasks: list[TaskReport]
    services: list[ServiceReport]
    events: EventsReport
    failing_checks: list[CheckResult]
    verdict: list[Finding]

    @property
    def ok(self) -> bool:
        """Nothing in the verdict needs a person."""
        return not any(f.severity in (CRITICAL, WARN) for f in self.verdict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- reading --------------------------------------------------------------------------------
def diagnose(engine: Engine, settings: Settings, task_id: int | None) -> Diagnosis:
    """The diagnosis of one task, or (`task_id` None) of every task that can still send
    and of every service."""
    with engine.connect() as conn:
        now = float(conn.execute(q.query(q.SELECT_NOW, conn.dialect.name)).scalar_one())
        rows = _task_rows(conn, task_id, now)
        ids = [row.id for row in rows]
        services = _services(conn, settings, now, ids)
        by_id = {s.id: s for s in services}
        eligible = {row.id: _eligible(conn, row.id, services) for row in rows}
        pinned = _pinned(conn, ids, by_id)
        tasks = [
            _task_report(conn, row, settings, now, eligible[row.id], pinned.get(row.id, {}))
            for row in rows
        ]
        events = _events(conn, settings, now, task_id)
    shown = services if task_id is None else eligible[task_id]
    checks = [c for c in run_checks(engine, settings) if c.status != OK]
    verdict = _verdict(tasks, eligible, shown, services, checks, settings, now, task_id is None)
    return Diagnosis(
        scope="installation" if task_id is None else "task",
        task_id=task_id,
        now=now,
        tasks=tasks,
        services=shown,
        events=events,
        failing_checks=checks,
        verdict=verdict,
    )


def _run(
    conn: Connection, sql: dict[str, str], params: dict[str, Any], *expanding: str
) -> CursorResult:
    return conn.execute(q.query(sql, conn.dialect.name, *expanding), params)


def _task_rows(conn: Connection, task_id: int | None, now: float) -> list[Row]:
    if task_id is None:
        return list(_run(conn, dq.OPEN_TASKS, {"now": now}))
    row = _run(conn, q.TASK_ROW, {"task_id": task_id}).first()
    if row is None:
        raise TaskNotFound(f"unknown task {task_id}")
    return [row]


def _services(
    conn: Connection, settings: Settings, now: float, task_ids: list[int]
) -> list[ServiceReport]:
    rows = _run(
        conn,
        dq.SERVICES,
        {"now": now, "heartbeat": settings.health_heartbeat_seconds, "window": PACE_WINDOW_SECONDS},
    ).all()
    sent = _counts_by_service(conn, dq.SENT_BY_SERVICE, task_ids)
    pinned = _counts_by_service(conn, dq.PINNED_PENDING, task_ids)
    return [_service_report(row, now, sent.get(row.id, 0), pinned.get(row.id, 0)) for row in rows]


def service_reports(engine: Engine, settings: Settings) -> list[ServiceReport]:
    """Every service as `edm diagnose` shows it (live workers, configured against measured
    pace, quota left and its reset, why frozen, last error), by the database's clock."""
    with engine.connect() as conn:
        now = float(conn.execute(q.query(q.SELECT_NOW, conn.dialect.name)).scalar_one())
        return _services(conn, settings, now, [])


def _counts_by_service(conn: Connection, sql: dict[str, str], task_ids: list[int]) -> dict:
    if not task_ids:
        return {}
    counts: dict[int, int] = {}
    for row in _run(conn, sql, {"task_ids": task_ids}, "task_ids"):
        counts[row.service_id] = counts.get(row.service_id, 0) + int(row.n)
    return counts


def _service_report(row: Row, now: float, sent: int, pinned: int) -> ServiceReport:
    used = int(row.quota_used) if row.quota_day == utc_day(now) else 0
    quota = row.daily_quota
    recent = int(row.sent_recently)
    measured = (
        (float(row.last_recent) - float(row.first_recent)) / (recent - 1) if recent >= 2 else None
    )
    paused = float(row.paused_until or 0)
    return ServiceReport(
        id=row.id,
        name=row.name,
        provider=row.provider,
        enabled=bool(row.enabled),
        frozen=bool(row.frozen),
        frozen_reason=row.frozen_reason,
        frozen_at=row.frozen_at,
        frozen_until=row.frozen_until,
        usable=bool(row.enabled) and not bool(row.frozen),
        paused_until=paused if paused > now else None,
        live_workers=int(row.live_workers),
        last_beat=row.last_beat,
        interval_seconds=float(row.interval_seconds),
        measured_seconds_per_email=measured,
        sent_recently=recent,
        last_sent_at=row.last_recent,
        daily_quota=quota,
        quota_used=used,
        quota_left=None if quota is None else max(quota - used, 0),
        quota_resets_at=None if quota is None else next_utc_midnight(now),
        last_error=row.worker_error or row.last_error,
        last_error_at=row.last_error_at,
        sent=sent,
        pinned_pending=pinned,
    )


def _eligible(conn: Connection, task_id: int, services: list[ServiceReport]) -> list[ServiceReport]:
    """The services a task may use: those it lists, or every one when it lists none (as
    the claim decides)."""
    listed = set(_run(conn, dq.TASK_SERVICE_IDS, {"task_id": task_id}).scalars())
    return [s for s in services if not listed or s.id in listed]


def _pinned(
    conn: Connection, task_ids: list[int], by_id: dict[int, ServiceReport]
) -> dict[int, dict[str, int]]:
    pinned: dict[int, dict[str, int]] = {}
    for task_id in task_ids:
        counts = _counts_by_service(conn, dq.PINNED_PENDING, [task_id])
        pinned[task_id] = {by_id[sid].name: n for sid, n in counts.items() if sid in by_id}
    return pinned


def _task_report(
    conn: Connection,
    row: Row,
    settings: Settings,
    now: float,
    eligible: list[ServiceReport],
    pinned: dict[str, int],
) -> TaskReport:
    ages = _status_ages(conn, row, settings, now)
    total = sum(a.count for a in ages)
    done = sum(a.count for a in ages if a.status in FINISHED)
    funnel = _funnel(conn, row.id, ages)
    lease = _run(
        conn,
        dq.PAST_LEASE,
        {"task_id": row.id, "now": now, "grace": _lease_grace(settings)},
    ).one()
    retry = _run(conn, dq.WAITING_RETRY, {"task_id": row.id, "now": now}).one()
    recent = int(
        _run(
            conn, dq.TASK_SENT_SINCE, {"task_id": row.id, "since": now - PACE_WINDOW_SECONDS}
        ).scalar_one()
    )
    # Rows pinned to a service that cannot send wait for it, whatever the pace.
    held = sum(pinned.get(s.name, 0) for s in eligible if _problems(s, now))
    left = sum(a.count for a in ages if a.status in LEFT) - held
    rate = _rate_per_minute(eligible)
    return TaskReport(
        id=row.id,
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        delivery_policy=row.delivery_policy,
        priority=int(row.priority),
        created_at=row.created_at,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        services=[s.name for s in eligible],
        progress=Progress(done, total, round(100.0 * done / total, 1) if total else 0.0),
        funnel=funnel,
        sub_tasks=ages,
        pinned=pinned,
        past_lease=int(lease.n),
        past_lease_oldest_seconds=now - float(lease.oldest) if lease.oldest is not None else None,
        waiting_retry=int(retry.n),
        next_retry_at=retry.next_due,
        sent_recently=recent,
        rate_per_minute=rate,
        minutes_left=left / rate if rate and left > 0 else None,
    )


def _lease_grace(settings: Settings) -> float:
    """What the past-lease health check allows: one upkeep period, at least a second."""
    return max(settings.maintenance_seconds, 1.0)


def _status_ages(conn: Connection, row: Row, settings: Settings, now: float) -> list[StatusAge]:
    params = {
        "task_id": row.id,
        "started": float(row.started_at or row.created_at),
        "lease_seconds": settings.lease_seconds,
    }
    ages = []
    for group in _run(conn, dq.STATUS_AGES, params):
        since = None if group.since is None else float(group.since)
        if since is None:
            oldest = _run(conn, dq.OLDEST_IN_STATUS_ANY, {**params, "status": group.status})
        else:
            oldest = _run(
                conn, dq.OLDEST_IN_STATUS, {**params, "status": group.status, "since": since}
            )
        ages.append(
            StatusAge(
                status=group.status,
                count=int(group.n),
                oldest_id=oldest.scalar(),
                oldest_since=since,
                oldest_age_seconds=None if since is None else now - since,
            )
        )
    order = {status: i for i, status in enumerate(STATUS_ORDER)}
    return sorted(ages, key=lambda a: order.get(a.status, len(order)))


def _funnel(conn: Connection, task_id: int, ages: list[StatusAge]) -> dict[str, int]:
    facts = _run(conn, q.TASK_FUNNEL, {"task_id": task_id}).one()._mapping
    n = {name: int(value or 0) for name, value in facts.items()}
    return {
        "sent": sum(a.count for a in ages if a.status == "sent"),
        "delivered": n["delivered"],
        "opened": n["opened"],
        "clicked": n["clicked"],
        "bounced": n["hard_bounced"] + n["soft_bounced"],
        "hard_bounced": n["hard_bounced"],
        "soft_bounced": n["soft_bounced"],
        "complained": n["complained"],
        "unsubscribed": n["unsubscribed"],
    }


def _rate_per_minute(eligible: list[ServiceReport]) -> float | None:
    """Emails a minute the task's services that can send now would send it, each at its
    measured pace (else the configured one); None when no pace is known."""
    per_minute = [
        60.0 / pace
        for s in eligible
        if not _problems(s, now=None)
        for pace in [s.measured_seconds_per_email or s.interval_seconds]
        if pace > 0
    ]
    return round(sum(per_minute), 1) if per_minute else None


def _events(conn: Connection, settings: Settings, now: float, task_id: int | None) -> EventsReport:
    if task_id is not None:
        counts = _run(conn, dq.TASK_EVENTS, {"task_id": task_id}).all()
        last = _run(conn, dq.TASK_LAST_EVENT, {"task_id": task_id}).first()
        since = None
    else:
        since = now - settings.health_events_window_seconds
        counts = _run(conn, dq.RECENT_EVENTS, {"since": since}).all()
        last = _run(conn, dq.LAST_EVENT, {}).first()
    return EventsReport(
        since=since,
        counts=[EventCount(r.event, r.status, int(r.n)) for r in counts],
        last=None
        if last is None
        else LastEvent(
            last.id,
            last.provider,
            last.event,
            last.status,
            last.occurred_at,
            last.created_at,
            last.sub_task_id,
        ),
    )


# -- the verdict ----------------------------------------------------------------------------
def _verdict(
    tasks: list[TaskReport],
    eligible: dict[int, list[ServiceReport]],
    shown: list[ServiceReport],
    services: list[ServiceReport],
    checks: list[CheckResult],
    settings: Settings,
    now: float,
    installation: bool,
) -> list[Finding]:
    """Every finding, the most severe first. A service named in a task's `blocked`
    finding is not reported again on a line of its own."""
    any_live = any(s.live_workers for s in services)
    findings: list[Finding] = []
    for task in tasks:
        findings += _task_findings(task, eligible[task.id], settings, now, any_live)
    named = {name for f in findings if f.code in ("blocked", "pinned") for name in f.services}
    if any(t.count(*ACTIVE) for t in tasks if t.status not in ("completed", "cancelled")):
        findings += [f for s in shown if s.name not in named for f in _service_findings(s, now)]
    if installation:
        findings += _check_findings(checks, findings)
        if not tasks:
            findings.append(
                Finding(INFO, "idle", "no task is running, paused or due: nothing waits to be sent")
            )
    unique = list({(f.code, f.message): f for f in findings}.values())
    return sorted(unique, key=lambda f: RANK[f.severity])


def _task_findings(
    task: TaskReport, eligible: list[ServiceReport], settings: Settings, now: float, any_live: bool
) -> list[Finding]:
    who = f"task {task.id} ({task.name})"
    if task.status in ("completed", "cancelled"):
        return [_ended(task, who, now)]
    findings = _status_findings(task, who, now, any_live)
    if task.count(*LEFT):
        findings += _service_blocks(task, who, eligible, now)
    findings += _row_findings(task, who, settings, now, any_live)
    if task.status == "running" and not any(f.severity == CRITICAL for f in findings):
        held = sum(task.pinned.get(s.name, 0) for s in eligible if _problems(s, now))
        findings.append(_progress_finding(task, who, settings, now, any_live, held))
    return findings


def _ended(task: TaskReport, who: str, now: float) -> Finding:
    if task.status == "completed":
        return Finding(
            INFO,
            "completed",
            f"{who} is completed{_since(task.completed_at, now, 'at')}: nothing is left to send",
            task_id=task.id,
        )
    return Finding(
        INFO,
        "cancelled",
        f"{who} was cancelled{_since(task.completed_at, now, 'at')}: its unsent sub-tasks were"
        " cancelled and will not be sent",
        task_id=task.id,
    )


def _status_findings(task: TaskReport, who: str, now: float, any_live: bool) -> list[Finding]:
    if task.status == "draft":
        return [
            Finding(
                CRITICAL,
                "draft",
                f"{who} is a draft: nothing is sent until it is started",
                [f"edm task start {task.id}"],
                task.id,
            )
        ]
    if task.status == "paused":
        why = f" ({task.status_reason})" if task.status_reason else ""
        return [
            Finding(
                CRITICAL,
                "paused",
                f"{who} is paused{why}: nothing is sent until it is resumed",
                [f"edm task resume {task.id}"],
                task.id,
            )
        ]
    if task.status == "scheduled":
        return [_scheduled(task, who, now, any_live)]
    return []


def _scheduled(task: TaskReport, who: str, now: float, any_live: bool) -> Finding:
    at = task.scheduled_at or now
    if at > now:
        return Finding(
            INFO,
            "scheduled",
            f"{who} is scheduled for {_clock(at, now)} (in {_span(at - now)}): the upkeep of a"
            f" running `edm worker` or `edm serve` starts it then (`edm task start {task.id}`"
            " starts it now)",
            task_id=task.id,
        )
    if any_live:
        return Finding(
            INFO,
            "scheduled",
            f"{who} was due at {_clock(at, now)}: the next upkeep pass starts it",
            task_id=task.id,
        )
    return Finding(
        CRITICAL,
        "scheduled",
        f"{who} was due at {_clock(at, now)}, {_span(now - at)} ago, but no `edm worker` or"
        " `edm serve` is running to start it",
        [START_WORKER],
        task.id,
    )


def _service_blocks(
    task: TaskReport, who: str, eligible: list[ServiceReport], now: float
) -> list[Finding]:
    """Nothing can send the task (critical), and sub-tasks pinned to a service that cannot
    send (warn): they wait for that one service whatever the others do."""
    findings = []
    if not eligible:
        findings.append(
            Finding(
                CRITICAL,
                "no_service",
                f"{who} has no service to send through: add one with `edm service add NAME"
                " --provider sandbox|smtp|engagelab --interval SECONDS`",
                task_id=task.id,
            )
        )
    elif all(_problems(s, now) for s in eligible):
        described = "; ".join(_described(s, now) for s in eligible)
        findings.append(
            Finding(
                CRITICAL,
                "blocked",
                f"nothing can send {who} now: {described}",
                _commands(eligible),
                task.id,
                [s.name for s in eligible],
            )
        )
    for service in eligible:
        waiting = task.pinned.get(service.name, 0)
        if waiting and _problems(service, now):
            findings.append(
                Finding(
                    WARN,
                    "pinned",
                    f"{who} has {_rows(waiting)} pinned to {service.name} (a resend with the"
                    f" same key only it can make), waiting for it: {_described(service, now)}",
                    _commands([service]),
                    task.id,
                    [service.name],
                )
            )
    return findings


def _row_findings(
    task: TaskReport, who: str, settings: Settings, now: float, any_live: bool
) -> list[Finding]:
    findings = []
    if task.past_lease:
        findings.append(_past_lease(task, who, any_live))
    unknown = task.oldest("unknown")
    if unknown:
        findings.append(_unknown(task, who, unknown, settings, any_live))
    if task.waiting_retry and task.next_retry_at is not None:
        findings.append(
            Finding(
                INFO,
                "retry_wait",
                f"{who} has {_rows(task.waiting_retry)} waiting for a retry after a transient"
                f" error, the next due in {_span(max(task.next_retry_at - now, 0))}",
                task_id=task.id,
            )
        )
    return findings


def _past_lease(task: TaskReport, who: str, any_live: bool) -> Finding:
    why = (
        "the reaper has not taken them back"
        if any_live
        else "no `edm worker` or `edm serve` is running the reaper that takes them back"
    )
    return Finding(
        WARN,
        "past_lease",
        f"{who} has {_rows(task.past_lease)} past {_its(task.past_lease)} lease (the oldest"
        f" by {_span(task.past_lease_oldest_seconds or 0)}): {why}",
        ["edm repair"],
        task.id,
    )


def _unknown(
    task: TaskReport, who: str, unknown: StatusAge, settings: Settings, any_live: bool
) -> Finding:
    age = unknown.oldest_age_seconds or 0.0
    policy = (
        "sent again" if task.delivery_policy == "at_least_once" else "failed as unknown_outcome"
    )
    if task.status == "paused":
        how = "the reconciler leaves them alone while the task is paused"
    elif not any_live:
        how = "no `edm worker` or `edm serve` is running the reconciler that settles them"
    else:
        how = (
            "the reconciler settles them: resent with the same key where the provider drops"
            f" repeats, else by the task's policy ({task.delivery_policy}: {policy})"
        )
    return Finding(
        WARN if age > settings.health_unknown_warn_seconds or not any_live else INFO,
        "unknown_outcomes",
        f"{who} has {_rows(unknown.count)} of unknown outcome (the oldest for {_span(age)},"
        f" sub-task {unknown.oldest_id}): {how}",
        [] if any_live or task.status == "paused" else [START_WORKER],
        task.id,
    )


def _progress_finding(
    task: TaskReport, who: str, settings: Settings, now: float, any_live: bool, held: int
) -> Finding:
    """A running task with nothing blocking it: its pace and what is left, that it has
    stalled, or that it has finished sending (upkeep completes it). `held`: pending rows
    pinned to a service that cannot send (a finding of their own)."""
    left = task.count(*LEFT)
    if not task.count(*ACTIVE):
        if any_live:
            return Finding(
                INFO,
                "finishing",
                f"every sub-task of {who} is finished: the next upkeep pass completes it",
                task_id=task.id,
            )
        return Finding(
            WARN,
            "finishing",
            f"every sub-task of {who} is finished, but no `edm worker` or `edm serve` is"
            " running the upkeep that completes it",
            [START_WORKER],
            task.id,
        )
    if not left:
        return Finding(
            INFO, "moving", f"{who} has nothing left to send but its unknown outcomes", [], task.id
        )
    if left <= held:
        return Finding(
            INFO, "moving", f"{who} has nothing else to send: the rest waits as above", [], task.id
        )
    started = task.started_at or task.created_at
    due = task.count("pending") - task.waiting_retry - held
    if (
        not task.sent_recently
        and due > 0
        and now - started > max(settings.health_queue_warn_seconds, PACE_WINDOW_SECONDS)
    ):
        return Finding(
            WARN,
            "stalled",
            f"{who} sent nothing in the last {_span(PACE_WINDOW_SECONDS)} though it has"
            f" {_rows(due)} due and a service that could send {_them(due)}: look at the"
            " worker's log and `edm service list`",
            [],
            task.id,
        )
    sendable = f"{_rows(left - held)} to send" + (f", {held} waiting as above" if held else "")
    if task.rate_per_minute and task.minutes_left is not None:
        return Finding(
            INFO,
            "moving",
            f"{who} is sending at {task.rate_per_minute:g}/min; about"
            f" {_minutes(task.minutes_left)} left ({sendable})",
            task_id=task.id,
        )
    return Finding(
        INFO,
        "moving",
        f"{who} is sending ({sendable}); no pace is known yet for an estimate",
        task_id=task.id,
    )


def _service_findings(service: ServiceReport, now: float) -> list[Finding]:
    """A service's own trouble, when some task has work left. A frozen or disabled one is
    only worth a note while others carry its share; one that should send and cannot is a
    warning."""
    problems = _problems(service, now)
    if not problems:
        return []
    severity = INFO if not service.usable else WARN
    carried = "; the other services carry its share" if not service.usable else ""
    return [
        Finding(
            severity,
            "service",
            f"{_described(service, now)}{carried}",
            _commands([service]),
            services=[service.name],
        )
    ]


# Failing health checks already said by a finding of one of these codes.
COVERED_BY = {
    "services_running": {"blocked", "service", "pinned", "scheduled", "finishing"},
    "frozen_services": {"blocked", "service", "pinned"},
    "past_lease": {"past_lease"},
    "queue_age": {"blocked", "stalled", "pinned"},
    "unknown_outcomes": {"unknown_outcomes"},
}
CHECK_COMMANDS = {
    "services_running": [START_WORKER],
    "past_lease": ["edm repair"],
    "events": ["edm repair"],
}


def _check_findings(checks: list[CheckResult], findings: list[Finding]) -> list[Finding]:
    """The failing checks the findings do not already explain, as they say it."""
    codes = {f.code for f in findings}
    return [
        Finding(
            CRITICAL if check.status == "critical" else WARN,
            f"check:{check.name}",
            f"health check {check.name}: {check.message}",
            _check_commands(check),
        )
        for check in checks
        if not COVERED_BY.get(check.name, set()) & codes
    ]


def _check_commands(check: CheckResult) -> list[str]:
    if check.name == "invariants":
        counts = check.value if isinstance(check.value, dict) else {}
        return ["edm repair"] if counts.get("facts_not_from_events") else []
    return list(CHECK_COMMANDS.get(check.name, []))


# -- what is wrong with a service, in words and commands ---------------------------------------
def _problems(service: ServiceReport, now: float | None) -> list[tuple[str, list[str]]]:
    """Why a service cannot send now, each reason with the commands that fix it (none
    when only time does). `now` None: the report's own reading already applied."""
    name = shlex.quote(service.name)
    reasons: list[tuple[str, list[str]]] = []
    if not service.enabled:
        reasons.append(("is disabled", [f"edm service enable {name}"]))
    if service.frozen:
        reasons.append((_frozen_words(service, now), [f"edm service unfreeze {name}"]))
    if not service.usable:
        return reasons
    if not service.live_workers:
        reasons.append((_no_worker_words(service, now), [START_WORKER]))
    if service.paused_until is not None:
        until = service.paused_until
        reasons.append((f"is paused by its provider until {_clock(until, now)}", []))
    if service.quota_left == 0:
        reasons.append((_quota_words(service, now), []))
    return reasons


def _described(service: ServiceReport, now: float) -> str:
    return f"{service.name} " + " and ".join(text for text, _ in _problems(service, now))


def _commands(services: Iterable[ServiceReport]) -> list[str]:
    """Each service's fixes, then (once) the worker that will send through them."""
    commands: list[str] = []
    for service in services:
        for _, fixes in _problems(service, None):
            commands += [c for c in fixes if c not in commands]
    if START_WORKER in commands:
        commands = [c for c in commands if c != START_WORKER] + [START_WORKER]
    return commands


def _frozen_words(service: ServiceReport, now: float | None) -> str:
    reason = service.frozen_reason or "no reason given"
    words = f"is frozen{_since(service.frozen_at, now, 'since')} ({reason})"
    if service.frozen_until is not None:
        words += f", and unfreezes by itself{_since(service.frozen_until, now, 'at')}"
    option = _credential_option(service)
    if option:
        words += (
            f"; if that is its {option}, set it first:"
            f" `edm service update {shlex.quote(service.name)} --option {option}=...`"
        )
    return words


def _credential_option(service: ServiceReport) -> str | None:
    """The option a provider's freeze most likely points at, from its reason."""
    reason = (service.frozen_reason or "").lower()
    if service.provider == "engagelab":
        if "base_url" in reason:
            return "base_url"
        if "401" in reason or "403" in reason:
            return "api_key"
    if service.provider == "smtp":
        if "authenticating" in reason or " 535" in reason:
            return "password"
        if "mail from" in reason:
            return "from"
    return None


def _no_worker_words(service: ServiceReport, now: float | None) -> str:
    words = (
        f"has no live worker (the last heartbeat {_clock(service.last_beat, now)})"
        if service.last_beat is not None
        else "has no running worker"
    )
    if service.last_error:
        words += f" (last error: {_cut(service.last_error)})"
    return words


def _quota_words(service: ServiceReport, now: float | None) -> str:
    raise_it = f"`edm service update {shlex.quote(service.name)} --daily-quota N`"
    if not service.daily_quota:
        return f"has a daily quota of 0 (raise it: {raise_it})"
    resets = service.quota_resets_at or 0.0
    when = _clock(resets, now) + (f", in {_span(resets - now)}" if now is not None else "")
    return (
        f"is out of its daily quota ({service.quota_used}/{service.daily_quota}) until {when}"
        f" (or raise it: {raise_it})"
    )


# -- words for times -----------------------------------------------------------------------------
def _clock(epoch: float | None, now: float | None) -> str:
    """A time as a person reads it: the hour alone when it is today (UTC)."""
    if epoch is None:
        return "never"
    moment = datetime.fromtimestamp(epoch, UTC)
    if now is not None and utc_day(epoch) == utc_day(now):
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _since(epoch: float | None, now: float | None, word: str) -> str:
    return "" if epoch is None else f" {word} {_clock(epoch, now)}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _minutes(minutes: float) -> str:
    if minutes < 1:
        return "less than a minute"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return _span(minutes * 60)


def _rows(n: int) -> str:
    return f"{n:,} sub-task" + ("" if n == 1 else "s")


def _its(n: int) -> str:
    return "its" if n == 1 else "their"


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


def _cut(text: str, most: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 1] + "…"
