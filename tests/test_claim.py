"""The claim, the fence, the reaper and the reconciler, driven directly on both databases."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.providers.base import OutgoingMessage
from edm.providers.sandbox import SandboxProvider
from edm.scheduler.claim import claim
from edm.scheduler.maintenance import UpkeepReport, reap, reconcile, run_upkeep
from edm.scheduler.transitions import Outcome, mark_sending, record_outcomes
from tests.helpers import make_contacts, scalar, status_counts

SETTINGS = Settings(max_attempts=3, retry_base_seconds=0.01, retry_max_seconds=0.02)


def _setup(engine: Engine, contacts: int = 3, interval: float = 0.0, **task: object) -> tuple:
    service_id = services_mod.add_service(engine, "s", "sandbox", interval)
    make_contacts(engine, contacts)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True, **task)
    return service_id, task_id


def _row(engine: Engine, sub_task_id: int) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM sub_tasks WHERE id = :i"), {"i": sub_task_id})
            .mappings()
            .one()
        )


def test_claim_leases_rows_with_a_fresh_token(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=5)
    first = claim(engine, service_id, 2, lease_seconds=30, lookahead=0)
    second = claim(engine, service_id, 10, lease_seconds=30, lookahead=0)
    assert [r.id for r in first.rows] == [1, 2]
    assert [r.id for r in second.rows] == [3, 4, 5]
    assert first.token != second.token
    row = _row(engine, 1)
    assert row["status"] == "allocated" and row["lease_token"] == first.token
    assert row["lease_expires_at"] > first.db_now + 29
    assert claim(engine, service_id, 10, lease_seconds=30, lookahead=0).rows == []


def test_paced_claim_books_one_slot_per_interval(engine: Engine) -> None:
    service_id, _ = _setup(engine, contacts=10, interval=0.5)
    taken = claim(engine, service_id, 50, lease_seconds=30, lookahead=1.2)
    slots = [r.slot_at for r in taken.rows]
    assert len(slots) == 3  # now, +0.5, +1.0 fit in a 1.2 s look-ahead
    assert [round(b - a, 6) for a, b in zip(slots, slots[1:], strict=False)] == [0.5, 0.5]
    again = claim(engine, service_id, 50, lease_seconds=30, lookahead=1.2)
    assert again.rows == [] and again.wake_at is not None
    assert abs(again.wake_at - (slots[-1] + 0.5 - 1.2)) < 1e-6


def test_claim_respects_task_state_and_allowed_services(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=2)
    other = services_mod.add_service(engine, "other", "sandbox", 0.0)
    only_other = tasks_mod.create_task(
        engine, "t2", "s", text_body="x", services=["other"], start=True
    )
    tasks_mod.pause_task(engine, task_id)
    assert claim(engine, service_id, 10, lease_seconds=30, lookahead=0).rows == []
    taken = claim(engine, other, 10, lease_seconds=30, lookahead=0)
    assert {r.task_id for r in taken.rows} == {only_other}


def test_fenced_off_writes_change_nothing(engine: Engine) -> None:
    service_id, _ = _setup(engine, contacts=1)
    old = claim(engine, service_id, 1, lease_seconds=0.05, lookahead=0)
    assert mark_sending(engine, old.token, [1], lease_seconds=0.05) == {1: 1}
    time.sleep(0.1)
    report = UpkeepReport()
    reap(engine, report)
    assert report.reaped_sending == 1
    reconcile(engine, report, SETTINGS)  # the sandbox honours keys: resend on the same service
    assert report.resent_same_key == 1
    time.sleep(0.05)  # the resend waits out a short back-off
    new = claim(engine, service_id, 1, lease_seconds=30, lookahead=0)
    assert [r.id for r in new.rows] == [1] and new.token != old.token
    assert new.rows[0].idempotency_key == old.rows[0].idempotency_key

    # The slow worker of the first claim comes back with its answer: fenced off.
    assert mark_sending(engine, old.token, [1], lease_seconds=30) == {}
    record_outcomes(
        engine,
        service_id,
        old.token,
        [Outcome(1, 1, "sent", time.time(), message_id="late")],
        SETTINGS,
    )
    row = _row(engine, 1)
    assert row["status"] == "allocated" and row["lease_token"] == new.token
    assert row["provider_message_id"] is None
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM send_attempts WHERE fenced AND provider_message_id = 'late'",
        )
        == 1
    )

    # The new owner's writes do land.
    assert mark_sending(engine, new.token, [1], lease_seconds=30) == {1: 2}
    record_outcomes(
        engine,
        service_id,
        new.token,
        [Outcome(1, 2, "sent", time.time(), message_id="m")],
        SETTINGS,
    )
    assert _row(engine, 1)["status"] == "sent"


def test_expired_allocated_rows_return_to_pending(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=2)
    claim(engine, service_id, 2, lease_seconds=0.05, lookahead=0)
    time.sleep(0.1)
    report = UpkeepReport()
    reap(engine, report)
    assert report.reaped_allocated == 2
    assert status_counts(engine, task_id) == {"pending": 2}


def test_unknown_outcome_follows_the_delivery_policy(engine: Engine) -> None:
    service_id, most_once = _setup(engine, contacts=1)
    least_once = tasks_mod.create_task(
        engine, "t2", "s", text_body="x", start=True, delivery_policy="at_least_once"
    )
    taken = claim(engine, service_id, 2, lease_seconds=30, lookahead=0)
    ids = [r.id for r in taken.rows]
    mark_sending(engine, taken.token, ids, lease_seconds=30)
    record_outcomes(
        engine,
        service_id,
        taken.token,
        [Outcome(i, 1, "unknown", time.time(), error="timeout") for i in ids],
        SETTINGS,
    )
    with engine.begin() as conn:  # a provider that cannot recognise keys
        conn.execute(text("UPDATE services SET provider = 'nokeys'"))
    report = run_upkeep(engine, SETTINGS)
    assert report.failed_unknown == 1 and report.requeued_unknown == 1
    assert status_counts(engine, most_once) == {"failed": 1}
    assert (
        scalar(engine, "SELECT last_error FROM sub_tasks WHERE task_id = :t", t=most_once)
        == "unknown_outcome"
    )
    assert status_counts(engine, least_once) == {"pending": 1}


def test_sandbox_answers_a_repeated_key_with_the_earlier_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    outbox = tmp_path / "outbox.jsonl"
    message = OutgoingMessage(1, 1, "key-1", "a@example.com", None, None, "s", None, "t")
    first = asyncio.run(SandboxProvider("x", {"outbox": str(outbox)}).send(message))
    # A new process (a new provider object) still knows the key from the outbox.
    again = asyncio.run(SandboxProvider("x", {"outbox": str(outbox)}).send(message))
    assert not first.duplicate and again.duplicate
    assert again.provider_message_id == first.provider_message_id
    lines = outbox.read_text().splitlines()
    assert len(lines) == 2 and '"duplicate": true' in lines[1]


def _send_one(engine: Engine, service_id: int, kind: str) -> None:
    taken = claim(engine, service_id, 1, lease_seconds=30, lookahead=0)
    row_id = taken.rows[0].id
    mark_sending(engine, taken.token, [row_id], lease_seconds=30)
    outcome = Outcome(row_id, 1, kind, time.time(), message_id="m", error="e")
    record_outcomes(engine, service_id, taken.token, [outcome], SETTINGS)


def test_task_completes_only_when_nothing_can_change(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=2)
    _send_one(engine, service_id, "sent")
    run_upkeep(engine, SETTINGS)
    assert tasks_mod.show_task(engine, task_id).status == "running"
    _send_one(engine, service_id, "recipient")
    run_upkeep(engine, SETTINGS)
    view = tasks_mod.show_task(engine, task_id)
    assert view.status == "completed" and view.counts == {"sent": 1, "failed": 1}


def test_retry_after_pauses_the_service_for_every_worker(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=3)
    taken = claim(engine, service_id, 1, lease_seconds=30, lookahead=0)
    row_id = taken.rows[0].id
    mark_sending(engine, taken.token, [row_id], lease_seconds=30)
    throttled = Outcome(row_id, 1, "transient", time.time(), error="429", retry_after=120)
    record_outcomes(engine, service_id, taken.token, [throttled], SETTINGS)
    # Any claim for this service, from any process, now waits for the pause to end.
    paused = claim(engine, service_id, 10, lease_seconds=30, lookahead=0)
    assert paused.rows == []
    assert paused.wake_at is not None and paused.wake_at >= paused.db_now + 119
    assert _row(engine, row_id)["next_attempt_at"] >= paused.db_now + 119
    assert status_counts(engine, task_id) == {"pending": 3}


def test_watermark_skips_the_claimed_prefix_until_cleared(engine: Engine) -> None:
    service_id, task_id = _setup(engine, contacts=5)
    marks: dict[int, int] = {}
    first = claim(engine, service_id, 2, lease_seconds=0.05, lookahead=0, watermarks=marks)
    assert [r.id for r in first.rows] == [1, 2] and marks == {task_id: 3}
    time.sleep(0.1)
    reap(engine, UpkeepReport())  # rows 1 and 2 are pending again, below the watermark
    second = claim(engine, service_id, 10, lease_seconds=30, lookahead=0, watermarks=marks)
    assert [r.id for r in second.rows] == [3, 4, 5]
    marks.clear()
    third = claim(engine, service_id, 10, lease_seconds=30, lookahead=0, watermarks=marks)
    assert [r.id for r in third.rows] == [1, 2]
