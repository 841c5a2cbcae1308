"""GCRA pace and quota arithmetic, checked over many inputs."""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from edm.scheduler.pace import PaceRow, allowance, next_utc_midnight, utc_day

NOW = 1_800_000_000.0


def row(**overrides: object) -> PaceRow:
    values = dict(
        enabled=True,
        frozen=False,
        interval_seconds=1.0,
        daily_quota=None,
        next_send_at=0.0,
        paused_until=0.0,
        quota_day=None,
        quota_used=0,
    )
    values.update(overrides)
    return PaceRow(**values)  # type: ignore[arg-type]


@given(
    interval=st.floats(0, 60),
    tat_offset=st.floats(-100, 100),
    lookahead=st.floats(0, 5),
    limit=st.integers(1, 500),
    quota=st.one_of(st.none(), st.integers(0, 50)),
    used=st.integers(0, 60),
)
# A subnormal interval once overflowed the slot count to infinity.
@example(interval=1e-308, tat_offset=0.0, lookahead=2.0, limit=1, quota=None, used=0)
def test_allowance_never_exceeds_pace_quota_or_limit(
    interval: float,
    tat_offset: float,
    lookahead: float,
    limit: int,
    quota: int | None,
    used: int,
) -> None:
    pace = row(
        interval_seconds=interval,
        next_send_at=NOW + tat_offset,
        daily_quota=quota,
        quota_day=utc_day(NOW),
        quota_used=used,
    )
    got = allowance(pace, NOW, limit, lookahead)
    assert 0 <= got.slots <= limit
    if quota is not None:
        assert got.slots <= max(quota - used, 0)
    if got.slots and interval > 0:
        assert got.first_slot >= NOW + tat_offset - 1e-9  # never before the TAT
        last = got.first_slot + (got.slots - 1) * interval
        assert last <= NOW + lookahead + 1e-6  # only slots inside the look-ahead
        next_tat, _ = got.after(got.slots)
        assert math.isclose(next_tat - got.first_slot, got.slots * interval, abs_tol=1e-5)
    if got.slots == 0:
        assert got.wake_at is None or got.wake_at >= NOW - lookahead


def test_idle_service_does_not_burst() -> None:
    got = allowance(row(interval_seconds=1.0, next_send_at=NOW - 3600), NOW, 50, 0.5)
    assert got.slots == 1 and got.first_slot == NOW


def test_frozen_disabled_or_paused_services_get_nothing() -> None:
    assert allowance(row(frozen=True), NOW, 10, 1).slots == 0
    assert allowance(row(enabled=False), NOW, 10, 1).slots == 0
    paused = allowance(row(paused_until=NOW + 30), NOW, 10, 1)
    assert paused.slots == 0 and paused.wake_at == NOW + 30


def test_a_pace_that_is_not_a_number_never_sends() -> None:
    # Stored before inputs were checked: a NaN pace once made a worker spin on its task.
    for interval in (math.nan, math.inf):
        got = allowance(row(interval_seconds=interval), NOW, 10, 1)
        assert got.slots == 0 and got.wake_at is None


def test_quota_resets_on_a_new_utc_day() -> None:
    spent = row(daily_quota=5, quota_day=utc_day(NOW), quota_used=5, interval_seconds=0)
    blocked = allowance(spent, NOW, 10, 1)
    assert blocked.slots == 0 and blocked.wake_at == next_utc_midnight(NOW)
    yesterday = row(daily_quota=5, quota_day="2000-01-01", quota_used=5, interval_seconds=0)
    assert allowance(yesterday, NOW, 10, 1).slots == 5
