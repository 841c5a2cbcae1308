"""When a task will be sent (`task_eta`), and how long a campaign would take (`plan`).

Arithmetic over facts read from the database, in one simulation. The rules:

- **What is left.** Pending sub-tasks, and those of unknown outcome that will be sent
  again: through their own service when it can send and its provider drops repeats of a
  key (the reconciler's same-key resend), else through any service when the task is
  `at_least_once`. Other unknown ones, and those out of attempts, will be failed and are
  not counted. Rows already claimed (allocated, sending) hold their pace slot and quota
  unit: they count as sent by their service's next free slot.
- **Which services.** Those the task may use (the claim's rule: the ones it lists, or
  every one when it lists none) that are enabled, not frozen, and have a daily quota
  other than 0. A row pinned to a service (a same-key resend) is sent by that service
  only; one pinned to a service that cannot send is held, and said so.
- **Pace.** One email per `interval_seconds`. An unpaced service (interval 0) goes at the
  pace it achieved over the last 10 minutes, as `edm diagnose` measures it, else at
  DEFAULT_UNPACED_SECONDS per email (an assumption, named in the notes). A service starts
  at its pace row's next slot, or when its provider's pause ends. Rates add up.
- **Quota.** A service stops when the quota left today is spent and starts again with a
  full quota at the next UTC midnight (`pace.next_utc_midnight`), as the claim counts it.
- **Sharing.** A service sends for the running tasks the claim serves before this one
  (higher priority; at the same priority the older task, as the claim takes rows by id)
  while they have rows it may send, then for this one. Those tasks are simulated too, so
  a shared service joins this task when their share through it runs out. A plan is a new
  task of priority 0: every running task of priority 0 or more goes first.
- **Workers.** A service without a live worker is counted as if one ran (with a note).

The simulation is fluid (a service sends 1/interval emails a second rather than one at
each tick), steps from event to event (a pool of rows emptied, a quota spent, a service
or a task starting, a UTC midnight) and gives up after MAX_DAYS. Kept simple on purpose:
a retry waiting for its back-off counts as due now, a same-key resend is assumed to come
within its provider's window, and at one priority the older task is served first whole
(the claim goes by sub-task id, which a draft's late expansion can interleave).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row

from edm import validation
from edm.config import Settings, get_settings
from edm.db import queries as q
from edm.db import report_queries as rq
from edm.health.diagnose import ServiceReport, _services, _span
from edm.scheduler.pace import next_utc_midnight, utc_day
from edm.task_views import TaskNotFound

# An unpaced service that sent nothing lately: about a tenth of a second per provider call.
DEFAULT_UNPACED_SECONDS = 0.1
# A measured pace faster than this is a burst of calls finishing together, not a pace.
MIN_SECONDS_PER_EMAIL = 1e-4
MAX_DAYS = 366
PLAN_PRIORITY = 0
DAY = 86_400.0


class ForecastInputError(ValueError):
    """Bad input for a plan; `field` names the input at fault (for the API)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# -- what a forecast holds ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceShare:
    name: str
    counted: bool  # False: it cannot send (why_not says why)
    why_not: str | None
    share: int  # sub-tasks of this task it sends
    seconds_per_email: float | None
    pace_from: str | None  # interval | measured | assumed
    daily_quota: int | None
    quota_left: int | None  # today, now
    opens_at: float | None  # its next free slot, or the end of its provider's pause
    starts_at: float | None  # when it first sends this task (None: it sends none)
    quota_reached: list[float]  # when it spends its daily quota while the task is sent
    serves_first: list[int]  # running tasks it sends for before this one
    live_worker: bool


@dataclass(frozen=True)
class Day:
    date: str  # UTC
    sent: int
    quota_reached: list[str]  # services that spend their daily quota that day


@dataclass(frozen=True)
class Forecast:
    now: float
    starts_at: float
    remaining: int  # sub-tasks left that will be sent
    held: int  # pinned to a service that cannot send: they wait for it
    ends_at: float | None
    reason: str | None  # why ends_at is None
    services: list[ServiceShare]
    days: list[Day]
    notes: list[str]

    @property
    def seconds_left(self) -> float | None:
        return None if self.ends_at is None else max(self.ends_at - self.now, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_left": self.seconds_left}


@dataclass(frozen=True)
class Eta(Forecast):
    task_id: int
    name: str
    status: str


@dataclass(frozen=True)
class Plan(Forecast):
    recipients: int

    @property
    def duration_seconds(self) -> float | None:
        return None if self.ends_at is None else self.ends_at - self.starts_at

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "duration_seconds": self.duration_seconds}


# -- the simulation ----------------------------------------------------------------------------
@dataclass
class _Lane:
    """A service that can send, as the simulation moves it."""

    id: int
    name: str
    seconds_per_email: float
    opens_at: float
    quota_left: float | None
    daily_quota: int | None
    share: float = 0.0  # of the target
    first_for_target: float | None = None


@dataclass
class _Work:
    """A task's rows left: those any of `services` may send, and those pinned to one."""

    task_id: int | None
    opens_at: float
    services: frozenset[int]
    unpinned: float
    pinned: dict[int, float]

    def left(self) -> float:
        return self.unpinned + sum(self.pinned.values())


@dataclass
class _Run:
    ends_at: float | None  # None: MAX_DAYS came first
    sent_by_day: dict[str, float]
    stops: list[_Stop]


@dataclass(frozen=True)
class _Stop:
    """A service spent its daily quota; `still`: the target's other services with quota left."""

    at: float
    lane: int
    name: str
    still: tuple[str, ...]


# A lane at work: the work it sends for, and the pin it takes from (None: any row).
Serving = list[tuple[_Lane, _Work, int | None]]
# A pool of rows being drained: its work, its pin, the emails a second taken from it.
Pools = dict[tuple[int, int | None], tuple[_Work, int | None, float]]


def _simulate(lanes: list[_Lane], works: list[_Work], target: _Work, now: float) -> _Run:
    """Every lane sends for the first work (in claim order) it may serve, event to event.
    Each step ends at the next event and makes it happen exactly (a pool emptied, a quota
    spent), so every step moves on even where a float step would not."""
    horizon = max(now, target.opens_at) + MAX_DAYS * DAY
    run = _Run(None, {}, [])
    t = now
    while target.left() > 0:
        if t >= horizon:
            return run
        serving = _assign(lanes, works, t)
        pools = _pools(serving)
        t_next = _next_event(lanes, works, serving, pools, t, horizon)
        emptied = [
            (w, pin) for w, pin, rate in pools.values() if _empties(w, pin, rate, t) <= t_next
        ]
        spent = [lane for lane, _, _ in serving if _spends(lane, t) <= t_next]
        _advance(serving, target, t, t_next, run)
        for work, pin in emptied:
            _set_pool(work, pin, 0.0)
        for lane in spent:
            lane.quota_left = 0.0
        run.stops += [_stop(lane, lanes, target, t_next) for lane in spent]
        if t_next >= next_utc_midnight(t):
            for lane in lanes:
                if lane.daily_quota is not None:
                    lane.quota_left = float(lane.daily_quota)
        t = t_next
    run.ends_at = max(t, target.opens_at)
    return run


def _assign(lanes: list[_Lane], works: list[_Work], t: float) -> Serving:
    serving: Serving = []
    for lane in lanes:
        if lane.opens_at > t or (lane.quota_left is not None and lane.quota_left <= 0):
            continue
        for work in works:
            if work.opens_at > t:
                continue
            if work.pinned.get(lane.id, 0.0) > 0:
                serving.append((lane, work, lane.id))
                break
            if lane.id in work.services and work.unpinned > 0:
                serving.append((lane, work, None))
                break
    return serving


def _pools(serving: Serving) -> Pools:
    pools: Pools = {}
    for lane, work, pin in serving:
        _, _, rate = pools.get((id(work), pin), (work, pin, 0.0))
        pools[(id(work), pin)] = (work, pin, rate + 1.0 / lane.seconds_per_email)
    return pools


def _pool(work: _Work, pin: int | None) -> float:
    return work.unpinned if pin is None else work.pinned[pin]


def _set_pool(work: _Work, pin: int | None, value: float) -> None:
    if pin is None:
        work.unpinned = max(value, 0.0)
    else:
        work.pinned[pin] = max(value, 0.0)


def _empties(work: _Work, pin: int | None, rate: float, t: float) -> float:
    return t + _pool(work, pin) / rate


def _spends(lane: _Lane, t: float) -> float:
    return math.inf if lane.quota_left is None else t + lane.quota_left * lane.seconds_per_email


def _next_event(
    lanes: list[_Lane], works: list[_Work], serving: Serving, pools: Pools, t: float, horizon: float
) -> float:
    events = [next_utc_midnight(t), horizon]
    events += [lane.opens_at for lane in lanes if lane.opens_at > t]
    events += [work.opens_at for work in works if work.opens_at > t]
    events += [_spends(lane, t) for lane, _, _ in serving]
    events += [_empties(work, pin, rate, t) for work, pin, rate in pools.values()]
    return min(events)


def _advance(serving: Serving, target: _Work, t: float, t_next: float, run: _Run) -> None:
    day = utc_day(t)
    for lane, work, pin in serving:
        amount = (t_next - t) / lane.seconds_per_email
        _set_pool(work, pin, _pool(work, pin) - amount)
        if lane.quota_left is not None:
            lane.quota_left = max(lane.quota_left - amount, 0.0)
        if work is target:
            lane.share += amount
            run.sent_by_day[day] = run.sent_by_day.get(day, 0.0) + amount
            if lane.first_for_target is None:
                lane.first_for_target = t


def _stop(lane: _Lane, lanes: list[_Lane], target: _Work, at: float) -> _Stop:
    """A spent quota, with the target's other services that still have some."""
    mine = target.services | set(target.pinned)
    still = tuple(
        other.name
        for other in lanes
        if other is not lane and other.id in mine and other.quota_left != 0.0
    )
    return _Stop(at, lane.id, lane.name, still)


# -- facts read from the database --------------------------------------------------------------
@dataclass(frozen=True)
class _Facts:
    now: float
    services: list[ServiceReport]
    next_slots: dict[int, float]
    running: list[Row]  # every running task, in the claim's order
    pools: dict[int, list[_Pool]]  # task id -> its rows left by status and service
    listed: dict[int, set[int]]  # task id -> the services it lists


def _read(
    conn: Connection,
    settings: Settings,
    now: float | None,
    task_ids: list[int],
    pending: dict[int, int] | None = None,
) -> _Facts:
    """`pending`: the pending rows of some tasks, already counted by the caller."""
    dialect = conn.dialect.name
    if now is None:
        now = float(conn.execute(q.query(q.SELECT_NOW, dialect)).scalar_one())
    services = _services(conn, settings, now, [])
    slots = {
        r.id: float(r.next_send_at or 0) for r in conn.execute(q.query(rq.NEXT_SLOTS, dialect))
    }
    running = conn.execute(q.query(rq.RUNNING_TASKS, dialect)).all()
    ids = sorted({*task_ids, *(r.id for r in running)})
    pools: dict[int, list[_Pool]] = {}
    listed: dict[int, set[int]] = {}
    if ids:
        params = {"task_ids": ids, "max_attempts": settings.max_attempts}
        for row in _left_by_pool(conn, params, pending or {}):
            pools.setdefault(row.task_id, []).append(row)
        for row in conn.execute(q.query(rq.TASK_SERVICES, dialect, "task_ids"), params):
            listed.setdefault(row.task_id, set()).add(row.service_id)
    return _Facts(now, services, slots, running, pools, listed)


@dataclass(frozen=True)
class _Pool:
    """Rows of a task left in one status, bound to one service (None: any)."""

    task_id: int
    status: str
    service_id: int | None
    n: int


def _left_by_pool(conn: Connection, params: dict[str, Any], counted: dict[int, int]) -> list[_Pool]:
    """Pending rows by their pin (the unpinned ones as all pending less the pinned), then
    rows in flight and of unknown outcome by their service. The pending rows of the tasks
    in `counted` are not counted again."""
    dialect = conn.dialect.name
    pending = dict(counted)
    uncounted = [task_id for task_id in params["task_ids"] if task_id not in counted]
    if uncounted:
        rows = conn.execute(
            q.query(rq.PENDING_BY_TASK, dialect, "task_ids"), {**params, "task_ids": uncounted}
        )
        pending.update(rows.all())
    pools = []
    for row in conn.execute(q.query(rq.PINNED_BY_TASK, dialect, "task_ids"), params):
        pools.append(_Pool(row.task_id, "pending", row.service_id, int(row.n)))
        pending[row.task_id] -= int(row.n)
    pools += [_Pool(task_id, "pending", None, int(n)) for task_id, n in pending.items() if n]
    for row in conn.execute(q.query(rq.IN_FLIGHT_BY_TASK, dialect, "task_ids"), params):
        pools.append(_Pool(row.task_id, row.status, row.service_id, int(row.n)))
    return pools


def _pace(service: ServiceReport) -> tuple[float, str]:
    """Seconds per email, and where that figure comes from."""
    if service.interval_seconds > 0:
        return service.interval_seconds, "interval"
    measured = service.measured_seconds_per_email
    if measured is not None:
        return max(measured, MIN_SECONDS_PER_EMAIL), "measured"
    return DEFAULT_UNPACED_SECONDS, "assumed"


def _why_not(service: ServiceReport) -> str | None:
    """Why a service cannot send at all, in words that follow its name; None: it can."""
    if not service.enabled:
        return "is disabled"
    if service.frozen:
        return f"is frozen ({service.frozen_reason})" if service.frozen_reason else "is frozen"
    if service.daily_quota == 0:
        return "has a daily quota of 0"
    return None


def _lanes(facts: _Facts) -> list[_Lane]:
    lanes = []
    for s in facts.services:
        if _why_not(s) is not None:
            continue
        seconds, _ = _pace(s)
        opens = max(facts.now, s.paused_until or 0.0)
        if s.interval_seconds > 0:
            opens = max(opens, facts.next_slots.get(s.id, 0.0))
        lanes.append(_Lane(s.id, s.name, seconds, opens, s.quota_left, s.daily_quota))
    return lanes


@dataclass
class _Left:
    """A task's rows left, sorted by who may send them."""

    unpinned: int = 0
    pinned: dict[int, int] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)
    will_fail: int = 0


def _left(rows: list[_Pool], policy: str, services: dict[int, ServiceReport]) -> _Left:
    left = _Left()
    for row in rows:
        n, sid = int(row.n), row.service_id
        if row.status == "pending" and sid is None:
            left.unpinned += n
        elif row.status == "pending":
            left.pinned[sid] = left.pinned.get(sid, 0) + n
        elif row.status in ("allocated", "sending"):
            left.in_flight[sid] = left.in_flight.get(sid, 0) + n
        elif row.status == "unknown" and _resent_same_key(services.get(sid)):
            left.pinned[sid] = left.pinned.get(sid, 0) + n
        elif row.status == "unknown" and policy == "at_least_once":
            left.unpinned += n
        else:  # unknown and at most once, or out of attempts: the reconciler fails them
            left.will_fail += n
    return left


def _resent_same_key(service: ServiceReport | None) -> bool:
    """The reconciler resends an unknown row through its own service when that service
    can send and its provider recognises a repeated key."""
    from edm.providers.base import OptionError
    from edm.providers.registry import provider_class

    if service is None or _why_not(service) is not None:
        return False
    try:
        return provider_class(service.provider).idempotency_window is not None
    except OptionError:
        return False


def _eligible(task_id: int | None, facts: _Facts, named: set[int] | None = None) -> set[int]:
    """The services a task may use: those it lists, else every one."""
    listed = named if named is not None else facts.listed.get(task_id or 0, set())
    return listed or {s.id for s in facts.services}


def _work(
    task_id: int | None, left: _Left, eligible: set[int], lanes: list[_Lane], opens_at: float
) -> tuple[_Work, int]:
    """The rows the lanes can send, and how many no lane can (held)."""
    usable = {lane.id for lane in lanes} & eligible
    held = 0 if usable else left.unpinned
    pinned = {}
    for sid, n in left.pinned.items():
        if sid in usable:
            pinned[sid] = float(n)
        else:
            held += n
    unpinned = float(left.unpinned) if usable else 0.0
    return _Work(task_id, opens_at, frozenset(usable), unpinned, pinned), held


def _ahead(facts: _Facts, lanes: list[_Lane], before: list[Row]) -> list[_Work]:
    by_id = {s.id: s for s in facts.services}
    works = []
    for row in before:
        left = _left(facts.pools.get(row.id, []), row.delivery_policy, by_id)
        work, _ = _work(row.id, left, _eligible(row.id, facts), lanes, facts.now)
        if work.left() > 0:
            works.append(work)
    return works


@dataclass
class _Case:
    """One forecast's inputs: the facts, the lanes, the works in claim order, the target."""

    facts: _Facts
    lanes: list[_Lane]
    ahead: list[_Work]
    target: _Work
    eligible: set[int]
    left: _Left
    held: int

    @property
    def works(self) -> list[_Work]:
        return [*self.ahead, self.target]


def _case(
    facts: _Facts, left: _Left, eligible: set[int], starts: float, before: list[Row]
) -> _Case:
    lanes = _lanes(facts)
    target, held = _work(None, left, eligible, lanes, starts)
    return _Case(facts, lanes, _ahead(facts, lanes, before), target, eligible, left, held)


# -- a task's ETA ------------------------------------------------------------------------------
def task_eta(
    engine: Engine,
    task_id: int,
    now: float | None = None,
    settings: Settings | None = None,
    *,
    counts: dict[str, int] | None = None,
) -> Eta:
    """When the task's last sub-task will be sent, by the rules above; `now` defaults to
    the database's clock. `counts`: the task's rows by status, when the caller has just
    read them (`edm task show`): its pending rows are not counted again (a quarter of
    the command's database time at a million)."""
    validation.record_id(task_id, "task", error=TaskNotFound)
    settings = settings or get_settings()
    pending = None if counts is None else {task_id: counts.get("pending", 0)}
    with engine.connect() as conn:
        row = conn.execute(q.query(q.TASK_ROW, conn.dialect.name), {"task_id": task_id}).first()
        if row is None:
            raise TaskNotFound(f"unknown task {task_id}")
        facts = _read(conn, settings, now, [task_id], pending)
    by_id = {s.id: s for s in facts.services}
    left = _left(facts.pools.get(task_id, []), row.delivery_policy, by_id)
    starts = facts.now
    if row.status == "scheduled" and row.scheduled_at is not None:
        starts = max(facts.now, float(row.scheduled_at))
    before = [r for r in facts.running if _claimed_before(r, row)]
    case = _case(facts, left, _eligible(task_id, facts), starts, before)
    who = f"task {task_id} ({row.name})"
    stopped = _not_sending(row, who)
    if row.status == "completed":
        done = f"{who} completed at {_at(row.completed_at, facts.now)}: nothing is left to send"
        ends_at, reason, notes, run = row.completed_at, None, [done], None
    elif stopped is not None:
        ends_at, reason, notes, run = None, stopped, [stopped], None
    else:
        ends_at, reason, notes, run = _forecast(case, who)
    return Eta(
        now=facts.now,
        starts_at=starts,
        remaining=_sendable(left) - case.held,
        held=case.held,
        ends_at=ends_at,
        reason=reason,
        services=_shares(case, run),
        days=_days(case, run),
        notes=notes,
        task_id=row.id,
        name=row.name,
        status=row.status,
    )


def _claimed_before(other: Row, task: Row) -> bool:
    """The claim serves `other` first: a higher priority, or the same and an older task."""
    if other.id == task.id:
        return False
    return (other.priority, -other.id) > (task.priority, -task.id)


def _not_sending(row: Row, who: str) -> str | None:
    """Why nothing of the task is sent until a person acts, or None."""
    if row.status == "draft":
        return f"{who} is a draft: nothing is sent until it is started (edm task start {row.id})"
    if row.status == "paused":
        why = f" ({row.status_reason})" if row.status_reason else ""
        return (
            f"{who} is paused{why}: nothing is sent until it is resumed (edm task resume {row.id})"
        )
    if row.status == "cancelled":
        return f"{who} was cancelled: its unsent sub-tasks will not be sent"
    return None


def _sendable(left: _Left) -> int:
    return left.unpinned + sum(left.pinned.values()) + sum(left.in_flight.values())


# -- a plan ------------------------------------------------------------------------------------
def plan(
    engine: Engine,
    recipients: int,
    services: list[str],
    start: float | None,
    *,
    now: float | None = None,
    settings: Settings | None = None,
) -> Plan:
    """How long a new campaign of `recipients` through `services` (none: every service),
    started at `start` (None: now), would take, and on which days quotas cut it."""
    recipients = validation.whole_number(
        recipients, "--recipients", 1, validation.INT32_MAX, error=ForecastInputError
    )
    names = list(dict.fromkeys(s.strip() for s in services if s.strip()))
    settings = settings or get_settings()
    with engine.connect() as conn:
        facts = _read(conn, settings, now, [])
    eligible = _eligible(None, facts, _named(facts, names))
    starts = _plan_start(start, facts.now)
    before = [r for r in facts.running if r.priority >= PLAN_PRIORITY]
    case = _case(facts, _Left(unpinned=recipients), eligible, starts, before)
    ends_at, reason, notes, run = _forecast(case, f"a campaign of {recipients:,}")
    return Plan(
        now=facts.now,
        starts_at=starts,
        remaining=recipients - case.held,
        held=case.held,
        ends_at=ends_at,
        reason=reason,
        services=_shares(case, run),
        days=_days(case, run),
        notes=notes,
        recipients=recipients,
    )


def _named(facts: _Facts, names: list[str]) -> set[int] | None:
    """The ids of the named services (None: none named, every one)."""
    if not names:
        return None
    ids = {s.name: s.id for s in facts.services}
    unknown = [n for n in names if n not in ids]
    if unknown:
        raise ForecastInputError(
            f"--services: unknown service {unknown[0]!r}"
            f" (known: {', '.join(sorted(ids)) or 'none'})",
            "services",
        )
    return {ids[n] for n in names}


def _plan_start(start: float | None, now: float) -> float:
    if start is None:
        return now
    if not (math.isfinite(start) and 0.0 <= start <= validation.MAX_EPOCH):
        raise ForecastInputError(f"--start must be a time from 1970 to 9999, not {start}", "start")
    if start < now - validation.PAST_TOLERANCE_SECONDS:
        raise ForecastInputError(
            f"--start {_iso(start)} is in the past: give a later time, or 'now'", "start"
        )
    if start > now + MAX_DAYS * DAY:
        raise ForecastInputError(
            f"--start {_iso(start)} is more than {MAX_DAYS} days away", "start"
        )
    return max(start, now)


# -- one forecast, in numbers and words --------------------------------------------------------
def _forecast(case: _Case, who: str) -> tuple[float | None, str | None, list[str], _Run | None]:
    """(ends_at, the reason when None, notes, the run)."""
    now = case.facts.now
    if not case.eligible:
        reason = f"{who} has no service to send through: add one with `edm service add`"
        return None, reason, [reason], None
    if case.target.left() <= 0 and case.held:
        reason = f"nothing can send {who}: " + _blocked(case)
        return None, reason, [reason, *_context_notes(case)], None
    run = _simulate(case.lanes, case.works, case.target, now)
    if run.ends_at is None:
        reason = f"{who} would take more than {MAX_DAYS} days at these paces and quotas"
        return None, reason, [reason, *_context_notes(case)], run
    ends = _in_flight_end(run.ends_at, case)
    return ends, None, [_headline(ends, now, run, case.target), *_context_notes(case)], run


def _in_flight_end(ends_at: float, case: _Case) -> float:
    """Rows in flight are sent by their service's next free slot at the latest."""
    slots = [lane.opens_at for lane in case.lanes if case.left.in_flight.get(lane.id)]
    return max([ends_at, *slots])


def _headline(ends: float, now: float, run: _Run, target: _Work) -> str:
    """When it ends, and what the daily quotas of its services do to it on the first day."""
    if ends <= now:
        return "nothing is left to send: the next upkeep pass completes it"
    words = f"ends about {_at(ends, now)} (in {_span(ends - now)})"
    stops = _cuts(run, target)
    days = sorted({utc_day(stop.at) for stop in stops})
    for stop in stops:
        if utc_day(stop.at) != days[0]:
            break
        words += (
            f"; {stop.name} reaches its daily quota at {_at(stop.at, now)},"
            f" after which {_after(stop, now)}"
        )
    if len(days) > 1:
        words += f"; daily quotas stop it on {len(days)} days, each time until 00:00 UTC"
    return words


def _cuts(run: _Run, target: _Work) -> list[_Stop]:
    """The quotas spent by the task's own services while it is being sent (one spent just
    as it ends cuts nothing)."""
    ends = run.ends_at if run.ends_at is not None else math.inf
    return [
        stop
        for stop in run.stops
        if (stop.lane in target.services or stop.lane in target.pinned)
        and target.opens_at <= stop.at < ends
    ]


def _after(stop: _Stop, now: float) -> str:
    if stop.still:
        return f"only {_names(stop.still)} {'sends' if len(stop.still) == 1 else 'send'}"
    resets = _at(next_utc_midnight(stop.at), now)
    return f"nothing sends it until the quotas reset at {resets}"


def _context_notes(case: _Case) -> list[str]:
    """What the estimate assumes and what holds it back, in plain words."""
    now = case.facts.now
    notes = []
    if case.target.opens_at > now:
        notes.append(f"it starts at {_at(case.target.opens_at, now)}")
    lanes = {lane.id: lane for lane in case.lanes}
    for service in case.facts.services:
        if service.id not in case.eligible:
            continue
        why = _why_not(service)
        if why is not None:
            notes.append(f"{service.name} {why}: not counted")
        else:
            notes += _service_notes(service, lanes[service.id], now)
    if case.held:
        notes.append(
            f"{_rows(case.held)} pinned to a service that cannot send wait for it: the task"
            " completes only once it can (edm diagnose says which)"
        )
    if case.left.will_fail:
        notes.append(
            f"{_rows(case.left.will_fail)} of unknown outcome will be failed (the task's"
            " delivery policy, or no attempts left), not resent: not counted"
        )
    notes += [_first_note(lane, case) for lane in case.lanes if _served_first(lane.id, case)]
    return notes


def _served_first(service_id: int, case: _Case) -> list[int]:
    """The running tasks ahead of this one that a service of it sends for first."""
    if service_id not in case.target.services and service_id not in case.target.pinned:
        return []
    return [
        w.task_id
        for w in case.ahead
        if w.task_id and (service_id in w.services or service_id in w.pinned)
    ]


def _first_note(lane: _Lane, case: _Case) -> str:
    tasks = _served_first(lane.id, case)
    which = f"task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))}"
    start = lane.first_for_target
    joins = (
        "it sends none of this one"
        if start is None
        else f"it starts on this one at {_at(start, case.facts.now)}"
    )
    return (
        f"{lane.name} sends for {which} first (as the claim does: a higher priority, or an"
        f" older task at the same priority): {joins}"
    )


def _service_notes(service: ServiceReport, lane: _Lane, now: float) -> list[str]:
    notes = []
    _, source = _pace(service)
    if source == "measured":
        notes.append(
            f"{service.name} is unpaced: counted at its pace of the last 10 minutes,"
            f" {lane.seconds_per_email:.3g} s per email"
        )
    elif source == "assumed":
        notes.append(
            f"{service.name} is unpaced and sent nothing in the last 10 minutes: assumed"
            f" {1 / DEFAULT_UNPACED_SECONDS:g} emails a second"
        )
    if service.paused_until is not None:
        notes.append(
            f"{service.name} is paused by its provider until {_at(service.paused_until, now)}"
        )
    if service.quota_left == 0:
        notes.append(
            f"{service.name} has spent its daily quota: it sends again from"
            f" {_at(next_utc_midnight(now), now)}"
        )
    if not service.live_workers:
        notes.append(f"{service.name} has no live worker: counted as if one ran (edm worker)")
    return notes


def _blocked(case: _Case) -> str:
    reasons = [
        f"{s.name} {why}"
        for s in case.facts.services
        if s.id in case.eligible
        for why in [_why_not(s)]
        if why is not None
    ]
    return "; ".join(reasons) or "its sub-tasks are pinned to services it may not use"


# -- shares and days ---------------------------------------------------------------------------
def _shares(case: _Case, run: _Run | None) -> list[ServiceShare]:
    """Each service the task may use (and any that holds rows of it in flight)."""
    in_flight = case.left.in_flight
    by_id = {lane.id: lane for lane in case.lanes}
    shown = [s for s in case.facts.services if s.id in case.eligible or in_flight.get(s.id)]
    counted = [by_id[s.id] for s in shown if s.id in by_id]
    whole = _whole([lane.share for lane in counted], round(sum(lane.share for lane in counted)))
    shares = {lane.id: n for lane, n in zip(counted, whole, strict=True)}
    cuts = _cuts(run, case.target) if run is not None else []
    return [
        _share(s, by_id.get(s.id), shares.get(s.id, 0) + in_flight.get(s.id, 0), cuts, case)
        for s in shown
    ]


def _share(
    s: ServiceReport, lane: _Lane | None, share: int, cuts: list[_Stop], case: _Case
) -> ServiceShare:
    seconds, source = _pace(s)
    return ServiceShare(
        name=s.name,
        counted=lane is not None,
        why_not=_why_not(s),
        share=share,
        seconds_per_email=seconds if lane is not None else None,
        pace_from=source if lane is not None else None,
        daily_quota=s.daily_quota,
        quota_left=s.quota_left,
        opens_at=lane.opens_at if lane is not None else None,
        starts_at=lane.first_for_target if lane is not None else None,
        quota_reached=[stop.at for stop in cuts if stop.lane == s.id],
        serves_first=_served_first(s.id, case),
        live_worker=bool(s.live_workers),
    )


def _days(case: _Case, run: _Run | None) -> list[Day]:
    """What the task sends each UTC day (rows in flight today), and the quotas spent."""
    if run is None:
        return []
    now, target = case.facts.now, case.target
    sent = dict(run.sent_by_day)
    flying = sum(case.left.in_flight.values())
    if flying:
        sent[utc_day(now)] = sent.get(utc_day(now), 0.0) + flying
    dates = sorted(sent)
    whole = _whole([sent[d] for d in dates], round(sum(sent.values())))
    stops: dict[str, list[str]] = {}
    for stop in _cuts(run, target):
        names = stops.setdefault(utc_day(stop.at), [])
        names += [] if stop.name in names else [stop.name]
    return [Day(d, n, stops.get(d, [])) for d, n in zip(dates, whole, strict=True) if n]


def _whole(values: list[float], total: int) -> list[int]:
    """Whole numbers that add up to `total`, each as near its value as can be (the largest
    remainders get the units rounding down left over)."""
    floors = [math.floor(v) for v in values]
    missing = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: values[i] - floors[i], reverse=True)
    for i in order[: max(missing, 0)]:
        floors[i] += 1
    return floors


# -- words -------------------------------------------------------------------------------------
def _at(epoch: float, now: float) -> str:
    """A time as a person reads it: the hour alone when it is today (UTC)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if utc_day(epoch) == utc_day(now):
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _rows(n: int) -> str:
    return f"{n:,} sub-task" + ("" if n == 1 else "s")


def _names(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
