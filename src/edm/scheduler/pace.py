"""How many sends a service may book now: GCRA on `next_send_at`, capped by quota.

Pure arithmetic on the locked service row, so it can be tested without a database and
so the claim transaction does nothing slow while it holds the lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class PaceRow:
    enabled: bool
    frozen: bool
    interval_seconds: float
    daily_quota: int | None
    next_send_at: float
    paused_until: float
    quota_day: str | None
    quota_used: int


@dataclass(frozen=True)
class Allowance:
    slots: int  # how many sub-tasks may be claimed now; 0, never None
    first_slot: float  # send time of the first; the k-th is first_slot + k * interval
    interval: float
    quota_day: str
    quota_used: int  # used today before this claim
    wake_at: float | None  # when asking again can give slots; None: only when told

    def after(self, claimed: int) -> tuple[float, int]:
        """The pace row's `next_send_at` and `quota_used` once `claimed` rows are taken."""
        return self.first_slot + claimed * self.interval, self.quota_used + claimed


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


def next_utc_midnight(epoch: float) -> float:
    day = datetime.fromtimestamp(epoch, UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def allowance(row: PaceRow | None, now: float, limit: int, lookahead: float) -> Allowance:
    today = utc_day(now)
    # A pace that is not a number (stored before inputs were checked) never sends.
    if row is None or not row.enabled or row.frozen or not math.isfinite(row.interval_seconds):
        return Allowance(0, now, 0.0, today, 0, None)
    used = row.quota_used if row.quota_day == today else 0
    interval = max(row.interval_seconds, 0.0)
    start = max(row.next_send_at, now) if interval > 0 else now
    if row.paused_until > now:
        return Allowance(0, start, interval, today, used, row.paused_until)
    left = limit if row.daily_quota is None else min(limit, row.daily_quota - used)
    if left <= 0:
        return Allowance(0, start, interval, today, used, next_utc_midnight(now))
    if interval > 0:
        horizon = now + lookahead
        if start > horizon:
            return Allowance(0, start, interval, today, used, start - lookahead)
        # With a tiny interval the quotient overflows to infinity: compare before flooring.
        slots_until_horizon = (horizon - start) / interval
        if slots_until_horizon < left:
            left = math.floor(slots_until_horizon) + 1
    return Allowance(left, start, interval, today, used, None)
