"""What an operator sees of a task: status, counts, why rows failed, the current rate.

Read with plain SQL and no ORM, so that `edm task show` (and `--watch`, which reads
this every second) starts and answers fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import Connection, Engine, text

from edm.db import queries as q
from edm.funnels import FACTS as FUNNEL_FACTS
from edm.funnels import kept_funnel

# Failure reasons listed per task, and how much of each message is shown: provider
# replies can be long and may quote an address.
REASONS_SHOWN = 10
REASON_CHARS = 160
RATE_WINDOW_SECONDS = 60.0


class TaskNotFound(ValueError):
    """No task has that id."""


@dataclass(frozen=True)
class FailureReason:
    status: str  # failed | skipped | unknown
    error_class: str | None
    message: str
    count: int


@dataclass(frozen=True)
class TaskView:
    id: int
    name: str
    status: str
    status_reason: str | None
    total: int
    counts: dict[str, int]
    services: list[str]
    delivery_policy: str
    priority: int
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    completed_at: float | None
    sent_last_minute: int = 0
    # Its audience: lists sent to, lists left out, the condition on fields (none: everyone).
    lists: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    where: str | None = None
    reasons: list[FailureReason] = field(default_factory=list)
    # Unique sub-tasks with each tracking fact; rates are of the sub-tasks sent.
    funnel: dict[str, int] = field(default_factory=dict)
    # Each sub-task once, by its shown state: its highest fact (complained, unsubscribed,
    # hard/soft bounced, clicked, opened, delivered), else its status.
    shown: dict[str, int] = field(default_factory=dict)

    @property
    def rates(self) -> dict[str, float]:
        sent = self.counts.get("sent", 0)
        return {fact: (n / sent if sent else 0.0) for fact, n in self.funnel.items()}

    def as_json(self) -> dict:
        return {**asdict(self), "rates": self.rates}


def show_task(engine: Engine, task_id: int, *, tallied: bool = True) -> TaskView:
    """The task with its failure reasons and, from one read of every row of the task, its
    funnel and shown states. `tallied=False` leaves those two out: the console reads the
    funnel beside the rest (`task_funnel`) and shows no states."""
    with engine.connect() as conn:
        row = conn.execute(q.query(q.TASK_ROW, engine.dialect.name), {"task_id": task_id}).first()
        if row is None:
            raise TaskNotFound(f"unknown task {task_id}")
        return _view(conn, row, details=True, tallied=tallied)


def task_funnel(engine: Engine, task_id: int) -> dict[str, int]:
    """Unique sub-tasks of the task with each delivery fact (see TaskView.funnel), as kept
    in `task_funnels`: one row, where counting reads every sub-task."""
    with engine.connect() as conn:
        return kept_funnel(conn, task_id)


def list_tasks(engine: Engine) -> list[TaskView]:
    with engine.connect() as conn:
        rows = conn.execute(q.query(q.TASK_ROWS, engine.dialect.name)).all()
        return [_view(conn, row, details=False) for row in rows]


def newest_tasks(engine: Engine, before: int, limit: int) -> list[TaskView]:
    """Tasks with an id below `before`, newest first: a page of the console's task list."""
    page = text(
        f"SELECT {q._TASK_COLUMNS} FROM tasks WHERE id < :before ORDER BY id DESC LIMIT :limit"
    )
    with engine.connect() as conn:
        rows = conn.execute(page, {"before": before, "limit": limit}).all()
        return [_view(conn, row, details=False) for row in rows]


def task_counts(conn: Connection, task_id: int) -> dict[str, int]:
    rows = conn.execute(q.query(q.TASK_COUNTS, conn.dialect.name), {"task_id": task_id})
    return {row.status: int(row.n) for row in rows}


def _tally(conn: Connection, task_id: int) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Counts by status, the funnel and the shown states, from one read (q.TASK_TALLY)."""
    counts: dict[str, int] = {}
    funnel = dict.fromkeys(FUNNEL_FACTS, 0)
    shown: dict[str, int] = {}
    for r in conn.execute(q.query(q.TASK_TALLY, conn.dialect.name), {"task_id": task_id}):
        n = int(r.n)
        has = {
            "delivered": bool(r.delivered),
            "opened": bool(r.opened),
            "clicked": bool(r.clicked),
            "hard_bounced": r.bounce_type == "hard",
            "soft_bounced": r.bounce_type == "soft",
            "complained": bool(r.complained),
            "unsubscribed": bool(r.unsubscribed),
        }
        counts[r.status] = counts.get(r.status, 0) + n
        for fact in FUNNEL_FACTS:
            funnel[fact] += n * has[fact]
        state = shown_state(r.status, has)
        shown[state] = shown.get(state, 0) + n
    return counts, funnel, shown


def shown_state(status: str, has: dict[str, bool]) -> str:
    """A sub-task's highest delivery fact by precedence, else its status. The facts are
    first-seen times, so the answer never depends on the order events came in."""
    for fact in ("complained", "unsubscribed", "hard_bounced"):
        if has[fact]:
            return fact
    if has["soft_bounced"] and not has["delivered"]:
        return "soft_bounced"
    for fact in ("clicked", "opened", "delivered"):
        if has[fact]:
            return fact
    return status


def _view(  # type: ignore[no-untyped-def]
    conn: Connection, row, *, details: bool, tallied: bool = True
) -> TaskView:
    dialect = conn.dialect.name
    if details and tallied:
        counts, funnel, shown = _tally(conn, row.id)
    else:
        counts, funnel, shown = task_counts(conn, row.id), {}, {}
    services = [
        name
        for (name,) in conn.execute(q.query(q.TASK_SERVICE_NAMES, dialect), {"task_id": row.id})
    ]
    audience = conn.execute(q.query(q.TASK_LIST_NAMES, dialect), {"task_id": row.id}).all()
    rate = 0
    reasons: list[FailureReason] = []
    if details:
        rate = int(
            conn.execute(
                q.query(q.TASK_SENT_SINCE, dialect),
                {"task_id": row.id, "seconds": RATE_WINDOW_SECONDS},
            ).scalar_one()
        )
        reasons = [
            FailureReason(r.status, r.error_class, _cut(r.last_error), int(r.n))
            for r in conn.execute(
                q.query(q.TASK_FAILURE_REASONS, dialect),
                {"task_id": row.id, "limit": REASONS_SHOWN},
            )
        ]
    return TaskView(
        id=row.id,
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        total=sum(counts.values()),
        counts=counts,
        services=services,
        delivery_policy=row.delivery_policy,
        priority=row.priority,
        created_at=row.created_at,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        sent_last_minute=rate,
        reasons=reasons,
        funnel=funnel,
        shown=shown,
        lists=[name for name, excluded in audience if not excluded],
        exclude=[name for name, excluded in audience if excluded],
        where=row.audience_where,
    )


def sent_by_service(conn: Connection, task_id: int) -> dict[int | None, int]:
    """The task's sent rows by the service that sent them (for a task page)."""
    rows = conn.execute(q.query(q.TASK_SENT_BY_SERVICE, conn.dialect.name), {"task_id": task_id})
    return {row.service_id: int(row.n) for row in rows}


def sent_per_minute(conn: Connection, task_id: int, since: float) -> list[tuple[float, int]]:
    """(start of the minute, rows sent in it) since `since`, oldest first; minutes with none
    are left out (for a task page's chart)."""
    params = {"task_id": task_id, "since": since}
    rows = conn.execute(q.query(q.TASK_SENT_PER_MINUTE, conn.dialect.name), params)
    return [(float(row.minute), int(row.n)) for row in rows]


def _cut(message: str | None) -> str:
    if not message:
        return ""
    message = " ".join(message.split())
    return message if len(message) <= REASON_CHARS else message[: REASON_CHARS - 1] + "…"
