"""End-to-end sending through real `edm worker` processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from tests.helpers import (
    Worker,
    make_contacts,
    read_outbox,
    scalar,
    sent_by_service,
    status_counts,
    task_status,
    wait_for,
)


def test_task_is_sent_through_both_services_and_completes(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    for name in ("store", "fun"):
        services_mod.add_service(engine, name, "sandbox", 0.02, options={"outbox": str(outbox)})
    make_contacts(engine, 60)
    task_id = tasks_mod.create_task(engine, "t", "Hi {{ name }}", text_body="x", start=True)

    worker = Worker(env, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr
    assert "started 2/2 services" in worker.stdout

    assert status_counts(engine, task_id) == {"sent": 60}
    assert task_status(engine, task_id) == "completed"
    by_service = sent_by_service(engine, task_id)
    assert set(by_service) == {"store", "fun"}, "both services must send"
    lines = read_outbox(outbox)
    assert len(lines) == 60
    assert {line["subject"] for line in lines} >= {"Hi User 0", "Hi User 59"}


def test_pace_of_each_service_matches_its_interval(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    intervals = {"slow": 0.31, "fast": 0.18}
    for name, interval in intervals.items():
        services_mod.add_service(engine, name, "sandbox", interval)
    make_contacts(engine, 200)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    window = 15.0

    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: len(sent_by_service(engine, task_id)) == 2, 20, "first sends")
        first = time.time()
        wait_for(lambda: time.time() > first + window + 1.0, window + 5, "the window")
    finally:
        assert worker.terminate() == 0
    for name, interval in intervals.items():
        times = _send_times(engine, name)
        in_window = [t for t in times if t < times[0] + window]
        expected = int(window / interval) + 1
        assert abs(len(in_window) - expected) <= 1, (name, len(in_window), expected)


def _send_times(engine: Engine, service: str) -> list[float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                text(
                    "SELECT a.started_at FROM send_attempts a JOIN services s"
                    " ON s.id = a.service_id WHERE s.name = :n ORDER BY a.started_at"
                ),
                {"n": service},
            )
        ]


def test_frozen_service_hands_its_share_to_the_other_and_comes_back(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    for name in ("a", "b"):
        services_mod.add_service(engine, name, "sandbox", 0.05)
    make_contacts(engine, 150)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(env, tmp_path, "--exit-when-idle")
    try:
        wait_for(lambda: sent_by_service(engine, task_id)["a"] >= 5, 20, "a to send")
        services_mod.set_frozen(engine, "a", True, "maintenance")
        time.sleep(1.5)  # in-flight sends of `a` settle
        frozen_count = sent_by_service(engine, task_id)["a"]
        wait_for(lambda: sent_by_service(engine, task_id)["b"] >= 40, 20, "b to carry on")
        assert sent_by_service(engine, task_id)["a"] == frozen_count, "a sent while frozen"

        services_mod.set_frozen(engine, "a", False)
        wait_for(
            lambda: sent_by_service(engine, task_id)["a"] > frozen_count,
            5,
            "a to resume without a restart",
        )
        assert worker.wait(60) == 0, worker.stderr
    finally:
        worker.kill()
    assert status_counts(engine, task_id) == {"sent": 150}
    assert task_status(engine, task_id) == "completed"


def test_daily_quota_stops_a_service_at_the_quota(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "capped", "sandbox", 0.0, daily_quota=7)
    services_mod.add_service(engine, "open", "sandbox", 0.02)
    make_contacts(engine, 60)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert sent_by_service(engine, task_id) == {"capped": 7, "open": 53}
    view = {v.name: v for v in services_mod.list_services(engine)}
    assert view["capped"].quota_used_today == 7


def test_quota_alone_leaves_the_rest_pending(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "capped", "sandbox", 0.0, daily_quota=5)
    make_contacts(engine, 12)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: status_counts(engine, task_id)["sent"] == 5, 20, "5 sends")
        time.sleep(1.0)
    finally:
        assert worker.terminate() == 0
    assert status_counts(engine, task_id) == {"sent": 5, "pending": 7}


def test_transient_failures_are_retried_and_succeed(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(
        engine, "flaky", "sandbox", 0.0, options={"fail_transient": "0.4", "seed": "7"}
    )
    make_contacts(engine, 40)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    env = {**env, "EDM_MAX_ATTEMPTS": "20"}
    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 40}
    transient = scalar(engine, "SELECT count(*) FROM send_attempts WHERE outcome = 'transient'")
    assert transient > 0
    assert scalar(engine, "SELECT max(attempts) FROM sub_tasks") > 1


def test_transient_failures_give_up_after_max_attempts(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "down", "sandbox", 0.0, options={"fail_transient": "1"})
    make_contacts(engine, 5)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    env = {**env, "EDM_MAX_ATTEMPTS": "3"}
    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"failed": 5}
    assert scalar(engine, "SELECT count(*) FROM send_attempts") == 15
    reason = scalar(engine, "SELECT last_error FROM sub_tasks LIMIT 1")
    assert "attempts exhausted (3)" in reason


def test_recipient_failures_end_failed_with_the_reason(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "strict", "sandbox", 0.0, options={"fail_recipient": "1"})
    make_contacts(engine, 10)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"failed": 10}
    assert task_status(engine, task_id) == "completed"
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM sub_tasks WHERE error_class = 'recipient'"
            " AND last_error LIKE '%mailbox does not exist%'",
        )
        == 10
    )
    assert scalar(engine, "SELECT count(*) FROM contacts WHERE status = 'invalid'") == 10


def test_service_error_freezes_the_service_and_others_finish(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "broken", "sandbox", 0.0, options={"fail_service": "1"})
    services_mod.add_service(engine, "good", "sandbox", 0.02)
    make_contacts(engine, 100)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 100}
    assert sent_by_service(engine, task_id) == {"good": 100}
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM send_attempts a JOIN services s"
            " ON s.id = a.service_id WHERE s.name = 'broken'",
        )
        >= 1
    )
    broken = {v.name: v for v in services_mod.list_services(engine)}["broken"]
    assert broken.frozen
    assert "suspended" in broken.frozen_reason


def test_suppressed_contacts_are_skipped(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    from edm.contacts import add_contacts

    services_mod.add_service(engine, "s", "sandbox", 0.0)
    add_contacts(
        engine,
        [
            {"email": "ok@example.com"},
            {"email": "gone@example.com", "status": "unsubscribed"},
            {"email": "later@example.com"},
        ],
    )
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x")
    with engine.begin() as conn:  # suppressed after the task was created, before it starts
        from sqlalchemy import text

        conn.execute(
            text("UPDATE contacts SET status = 'bounced' WHERE email = 'later@example.com'")
        )
    tasks_mod.start_task(engine, task_id)

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 1, "skipped": 2}
    reasons = scalar(
        engine,
        "SELECT count(*) FROM sub_tasks WHERE status = 'skipped'"
        " AND last_error IN ('contact is unsubscribed', 'contact is bounced')",
    )
    assert reasons == 2


def test_pause_resume_and_cancel_take_effect_promptly(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.05)
    make_contacts(engine, 200)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: status_counts(engine, task_id)["sent"] >= 5, 20, "first sends")
        tasks_mod.pause_task(engine, task_id)
        time.sleep(0.5)
        paused_at = status_counts(engine, task_id)
        assert paused_at["allocated"] == paused_at["sending"] == 0
        time.sleep(1.0)
        assert status_counts(engine, task_id)["sent"] == paused_at["sent"], "sent while paused"

        tasks_mod.resume_task(engine, task_id)
        wait_for(
            lambda: status_counts(engine, task_id)["sent"] > paused_at["sent"],
            5,
            "sending to resume",
        )
        tasks_mod.cancel_task(engine, task_id)
        time.sleep(0.5)
        counts = status_counts(engine, task_id)
        assert counts["pending"] == counts["allocated"] == counts["sending"] == 0
        assert counts["cancelled"] > 0
        assert counts["sent"] + counts["cancelled"] == 200
        assert task_status(engine, task_id) == "cancelled"
    finally:
        assert worker.terminate() == 0


def test_service_added_while_running_is_picked_up_without_restart(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "first", "sandbox", 0.1)
    make_contacts(engine, 100)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: sent_by_service(engine, task_id)["first"] >= 2, 20, "first sends")
        services_mod.add_service(engine, "second", "sandbox", 0.02)
        wait_for(
            lambda: sent_by_service(engine, task_id)["second"] >= 1, 5, "the new service to send"
        )
    finally:
        assert worker.terminate() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_releases_work_and_exits_promptly(
    engine: Engine, env: dict[str, str], tmp_path: Path, sig: int
) -> None:
    services_mod.add_service(engine, "slow", "sandbox", 0.0, options={"latency": "0.5"})
    make_contacts(engine, 500)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker({**env, "EDM_LEASE_SECONDS": "60"}, tmp_path)
    wait_for(lambda: status_counts(engine, task_id)["sent"] >= 1, 20, "first sends")
    started = time.monotonic()
    assert worker.terminate(timeout=10, sig=sig) == 0
    assert time.monotonic() - started < 10
    counts = status_counts(engine, task_id)
    assert counts["allocated"] == counts["sending"] == counts["unknown"] == 0, counts
    assert counts["sent"] + counts["pending"] == 500


def test_a_call_with_no_answer_in_time_ends_unknown_not_sent(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    # The lease is 1 s (FAST_ENV): a call is given up after 0.8 s, before the lease runs out.
    services_mod.add_service(engine, "mute", "sandbox", 0, options={"latency": "30"})
    make_contacts(engine, 3)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(env, tmp_path)
    try:
        wait_for(
            lambda: scalar(engine, "SELECT count(*) FROM send_attempts") >= 3,
            20,
            "three calls given up",
        )
    finally:
        assert worker.terminate() == 0, worker.stderr
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT outcome, error FROM send_attempts")).all()
    assert {outcome for outcome, _ in attempts} == {"unknown"}
    assert all("no answer from the provider within 0.8s" in error for _, error in attempts)
    assert status_counts(engine, task_id)["sent"] == 0
