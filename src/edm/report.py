"""`edm report`: what each service and each task did over a window of time.

Sends are provider calls the provider accepted (`send_attempts.outcome = 'sent'`); the
delivery, open, click, bounce and complaint rates are of the sub-tasks sent in the window
(their facts as the events have set them so far); the achieved pace is measured between
the first and the last accepted call of the window, as `edm diagnose` measures it, so a
service idle for most of the day is not shown as slow. Errors are counted twice over, as
the operator asks about them: provider calls by outcome, and sub-tasks that failed in the
window by error class. Webhook lag is received less occurred, of the providers' events
received in the window. Every figure is one aggregate query; nothing reads rows one by one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from edm.db import queries as q
from edm.db import report_queries as rq

FACTS = ("delivered", "opened", "clicked", "bounced", "hard_bounced", "complained", "unsubscribed")
# Ten years: a window beyond it covers the whole history anyway.
MAX_SINCE_SECONDS = 3650 * 86_400.0


class ReportInputError(ValueError):
    """A window that is not a positive number of seconds."""


@dataclass
class Line:
    """One service or one task over the window."""

    id: int | None
    name: str
    calls: int = 0  # provider calls, whatever their outcome
    sends: int = 0  # calls the provider accepted
    sent: int = 0  # sub-tasks sent in the window: the rates are of these
    facts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACTS, 0))
    seconds_per_email: float | None = None  # achieved, first to last accepted call
    interval_seconds: float | None = None  # configured (services only)
    errors: dict[str, int] = field(default_factory=dict)  # calls by outcome other than sent
    failed: dict[str, int] = field(default_factory=dict)  # sub-tasks failed, by error class
    unknown_outcomes: int = 0  # calls whose outcome was unknown
    unknown_now: int = 0  # sub-tasks of unknown outcome now, waiting for the reconciler
    status: str | None = None  # tasks only
    first_send: float | None = None
    last_send: float | None = None

    @property
    def rates(self) -> dict[str, float | None]:
        return {k: (n / self.sent if self.sent else None) for k, n in self.facts.items()}

    @property
    def per_minute(self) -> float | None:
        return None if not self.seconds_per_email else 60.0 / self.seconds_per_email

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rates": self.rates, "per_minute": self.per_minute}


@dataclass(frozen=True)
class Lag:
    events: int
    median_seconds: float | None
    p95_seconds: float | None
    max_seconds: float | None


@dataclass(frozen=True)
class Report:
    now: float
    since: float
    window_seconds: float
    services: list[Line]
    tasks: list[Line]
    total: Line
    webhook_lag: Lag

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "since": self.since,
            "window_seconds": self.window_seconds,
            "services": [line.as_dict() for line in self.services],
            "tasks": [line.as_dict() for line in self.tasks],
            "total": self.total.as_dict(),
            "webhook_lag": asdict(self.webhook_lag),
        }


def report(engine: Engine, since_seconds: float, now: float | None = None) -> Report:
    """The last `since_seconds` up to `now` (default: the database's clock)."""
    if not (math.isfinite(since_seconds) and 0 < since_seconds <= MAX_SINCE_SECONDS):
        raise ReportInputError(
            f"the window must be more than 0 and at most {MAX_SINCE_SECONDS / 86_400:g} days,"
            f" not {since_seconds} seconds"
        )
    with engine.connect() as conn:
        if now is None:
            now = float(conn.execute(q.query(q.SELECT_NOW, conn.dialect.name)).scalar_one())
        window = {"since": now - since_seconds, "now": now}
        services = _service_lines(conn, window)
        tasks = _task_lines(conn, window)
        lag = _lag(conn, window)
    return Report(
        now=now,
        since=now - since_seconds,
        window_seconds=since_seconds,
        services=services,
        tasks=tasks,
        total=_total(services),
        webhook_lag=lag,
    )


def _run(conn: Connection, sql: dict[str, str], params: dict, *expanding: str) -> list:
    return conn.execute(q.query(sql, conn.dialect.name, *expanding), params).all()


def _service_lines(conn: Connection, window: dict[str, float]) -> list[Line]:
    lines = {
        row.id: Line(row.id, row.name, interval_seconds=float(row.interval_seconds))
        for row in _run(conn, rq.SERVICE_ROWS, {})
    }
    queries = (rq.CALLS_BY_SERVICE, rq.FACTS_BY_SERVICE, rq.FAILED_BY_SERVICE)
    _fill(conn, lines, window, queries, grow=False)
    for row in _run(conn, rq.UNKNOWN_BY_SERVICE, {}):
        if row.id in lines:
            lines[row.id].unknown_now = int(row.n)
    return list(lines.values())


def _task_lines(conn: Connection, window: dict[str, float]) -> list[Line]:
    """The tasks with anything in the window, or of unknown outcome now."""
    lines: dict[int, Line] = {}
    _fill(conn, lines, window, (rq.CALLS_BY_TASK, rq.FACTS_BY_TASK, rq.FAILED_BY_TASK), grow=True)
    for row in _run(conn, rq.UNKNOWN_BY_TASK, {}):
        _line(lines, row.id).unknown_now = int(row.n)
    if lines:
        for row in _run(conn, rq.TASK_NAMES, {"ids": sorted(lines)}, "ids"):
            lines[row.id].name, lines[row.id].status = row.name, row.status
    return [lines[task_id] for task_id in sorted(lines)]


def _line(lines: dict[int, Line], key: int) -> Line:
    """A task's line, made on its first figure; the name comes once all are in."""
    if key not in lines:
        lines[key] = Line(key, "")
    return lines[key]


def _fill(
    conn: Connection,
    lines: dict[int, Line],
    window: dict[str, float],
    queries: tuple[dict[str, str], dict[str, str], dict[str, str]],
    *,
    grow: bool,
) -> None:
    """Calls, facts and failures into the lines. `grow`: a key without a line gets one
    (tasks appear as they are found); else it is left out (every service is listed first,
    so a row without one had no service)."""
    calls, facts, failed = queries

    def get(key: int | None) -> Line | None:
        if key is None:
            return None
        return _line(lines, key) if grow else lines.get(key)

    for row in _run(conn, calls, window):
        line = get(row.id)
        if line is not None:
            _add_calls(line, row)
    for row in _run(conn, facts, window):
        line = get(row.id)
        if line is not None:
            line.sent = int(row.sent)
            line.facts = {k: int(getattr(row, k) or 0) for k in FACTS}
    for row in _run(conn, failed, window):
        line = get(row.id)
        if line is not None:
            line.failed[row.error_class] = int(row.n)


def _add_calls(line: Line, row: Any) -> None:
    n = int(row.n)
    line.calls += n
    if row.outcome != "sent":
        line.errors[row.outcome] = line.errors.get(row.outcome, 0) + n
        if row.outcome == "unknown":
            line.unknown_outcomes += n
        return
    line.sends += n
    line.first_send, line.last_send = float(row.first_at), float(row.last_at)
    line.seconds_per_email = _pace(n, line.first_send, line.last_send)


def _pace(sends: int, first: float | None, last: float | None) -> float | None:
    """Seconds per email between the first and the last accepted call; None with fewer
    than two, or all at one instant."""
    if sends < 2 or first is None or last is None or last <= first:
        return None
    return (last - first) / (sends - 1)


def _total(services: list[Line]) -> Line:
    total = Line(None, "all services")
    for line in services:
        total.calls += line.calls
        total.sends += line.sends
        total.sent += line.sent
        total.unknown_outcomes += line.unknown_outcomes
        total.unknown_now += line.unknown_now
        for key, n in line.facts.items():
            total.facts[key] += n
        for counts, into in ((line.errors, total.errors), (line.failed, total.failed)):
            for key, n in counts.items():
                into[key] = into.get(key, 0) + n
    firsts = [line.first_send for line in services if line.first_send is not None]
    lasts = [line.last_send for line in services if line.last_send is not None]
    total.first_send = min(firsts) if firsts else None
    total.last_send = max(lasts) if lasts else None
    total.seconds_per_email = _pace(total.sends, total.first_send, total.last_send)
    return total


def _lag(conn: Connection, window: dict[str, float]) -> Lag:
    row = _run(conn, rq.WEBHOOK_LAG, {**window, "p50": 0.5 - 1e-9, "p95": 0.95 - 1e-9})[0]
    return Lag(
        events=int(row.n),
        median_seconds=None if row.p50 is None else float(row.p50),
        p95_seconds=None if row.p95 is None else float(row.p95),
        max_seconds=None if row.most is None else float(row.most),
    )
