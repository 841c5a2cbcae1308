"""The claim: one short transaction that books pace slots and leases sub-tasks.

Steps (see DESIGN.md, "Claim"): lock the service's pace row, compute the allowed number
of slots, claim that many pending rows with a fresh lease token, advance the pace and
quota by what was really claimed. The contacts to render are read in the same
transaction. No provider is ever called while it is open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from edm.db import queries as q
from edm.scheduler.pace import PaceRow, allowance


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    task_id: int
    contact_id: int
    idempotency_key: str
    slot_at: float  # database time at which this one may be sent


@dataclass(frozen=True)
class Claim:
    token: str
    rows: list[ClaimedRow]
    contacts: dict[int, dict]
    db_now: float  # the database's clock when the claim was made
    lease_until: float
    wake_at: float | None  # when no rows: when to ask again (None: idle poll)
    interval: float = 0.0  # the service's pace when claimed: slots are this far apart
    # The pace row as this claim left it, so slots it does not use can be given back
    # while no later claim has booked past them.
    pace_end: float = 0.0
    quota_day: str = ""


def new_token() -> str:
    return uuid.uuid4().hex


def claim(
    engine: Engine,
    service_id: int,
    limit: int,
    *,
    lease_seconds: float,
    lookahead: float,
    watermarks: dict[int, int] | None = None,
    owner: str | None = None,
) -> Claim:
    """Claim for one service. `watermarks` (task id -> lowest id worth scanning) is the
    caller's memory of how far each task's claims have got; it is updated in place and
    must be cleared now and then, so rows that became pending again below it are seen.
    `owner` (the claiming instance) lets its claims be released early if it dies."""
    watermarks = {} if watermarks is None else watermarks
    dialect = engine.dialect.name
    token = new_token()
    with engine.begin() as conn:
        lock = conn.execute(q.query(q.LOCK_SERVICE, dialect), {"service_id": service_id})
        record = lock.mappings().first()
        now = float(record["now"]) if record else _db_now(conn, dialect)
        pace = _pace_row(record) if record else None
        allowed = allowance(pace, now, limit, lookahead)
        if allowed.slots == 0:
            return Claim(token, [], {}, now, now, allowed.wake_at)
        tasks = conn.execute(q.query(q.ELIGIBLE_TASKS, dialect), {"service_id": service_id}).all()
        last_slot = allowed.first_slot + (allowed.slots - 1) * allowed.interval
        lease_until = last_slot + lease_seconds
        claimed: list = []
        # Best priority first; lower priorities only fill what is left.
        for task_ids in _by_priority(tasks):
            want = allowed.slots - len(claimed)
            if want <= 0:
                break
            rows = conn.execute(
                q.query(q.CLAIM, dialect, "task_ids"),
                {
                    "service_id": service_id,
                    "token": token,
                    "owner": owner,
                    "lease_until": lease_until,
                    "task_ids": task_ids,
                    "now": now,
                    "n": want,
                    "after": min(watermarks.get(task_id, 0) for task_id in task_ids),
                },
            ).all()
            for row in rows:
                watermarks[row.task_id] = max(watermarks.get(row.task_id, 0), row.id + 1)
            claimed += rows
        if not claimed:
            return Claim(token, [], {}, now, now, None)
        claimed.sort(key=lambda row: row.id)
        next_send_at, quota_used = allowed.after(len(claimed))
        conn.execute(
            q.query(q.ADVANCE_PACE, dialect),
            {
                "service_id": service_id,
                "next_send_at": next_send_at,
                "quota_day": allowed.quota_day,
                "quota_used": quota_used,
            },
        )
        result = conn.execute(
            q.query(q.CLAIMED_CONTACTS, dialect, "ids"),
            {"ids": sorted({row.contact_id for row in claimed})},
        )
        # Plain tuples zipped with the column names: a row's mapping view is slow to copy.
        columns = tuple(result.keys())
        contacts = {row[0]: dict(zip(columns, row, strict=True)) for row in result}
    rows = [
        ClaimedRow(
            row.id,
            row.task_id,
            row.contact_id,
            row.idempotency_key,
            allowed.first_slot + i * allowed.interval,
        )
        for i, row in enumerate(claimed)
    ]
    return Claim(
        token,
        rows,
        contacts,
        now,
        lease_until,
        None,
        allowed.interval,
        pace_end=next_send_at,
        quota_day=allowed.quota_day,
    )


def _pace_row(record) -> PaceRow:  # type: ignore[no-untyped-def]
    return PaceRow(
        enabled=bool(record["enabled"]),
        frozen=bool(record["frozen"]),
        interval_seconds=float(record["interval_seconds"]),
        daily_quota=record["daily_quota"],
        next_send_at=float(record["next_send_at"]),
        paused_until=float(record["paused_until"]),
        quota_day=record["quota_day"],
        quota_used=int(record["quota_used"]),
    )


def _db_now(conn: Connection, dialect: str) -> float:
    return float(conn.execute(q.query(q.SELECT_NOW, dialect)).scalar_one())


def _by_priority(tasks: list) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for task in tasks:
        groups.setdefault(task.priority, []).append(task.id)
    return [groups[p] for p in sorted(groups, reverse=True)]
