"""Claims of a worker that is gone come back at once, not after their leases run out.

The leases here are long (60 s and 30 s) so that only the early release can explain a
task that finishes within seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.scheduler import worker as worker_mod
from edm.scheduler.supervisor import Supervisor
from tests.helpers import (
    Worker,
    child_env,
    make_contacts,
    read_outbox,
    status_counts,
    task_status,
    wait_for,
)


def test_a_sigkilled_workers_claims_are_taken_again_within_seconds(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    # Paced, and booking slots 4 s ahead: a worker always holds allocated rows.
    services_mod.add_service(engine, "s", "sandbox", 0.2, options={"outbox": str(outbox)})
    total = 30
    make_contacts(engine, total)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    slow_env = child_env(
        env,
        EDM_LEASE_SECONDS="60",
        EDM_LOOKAHEAD_SECONDS="4",
        EDM_INSTANCE_DEAD_SECONDS="2",
    )
    first = Worker(slow_env, tmp_path)
    wait_for(lambda: status_counts(engine, task_id)["sent"] >= 3, 30, "the first sends")
    first.kill()
    held = status_counts(engine, task_id)
    assert held["allocated"] + held["sending"] > 0, held

    killed_at = time.monotonic()
    second = Worker(slow_env, tmp_path)
    try:
        wait_for(
            lambda: status_counts(engine, task_id)["sent"] == total,
            40,
            "every sub-task sent without waiting out the 60 s leases",
        )
    finally:
        second.terminate()
    took = time.monotonic() - killed_at
    # 27 sends at 0.2 s are 5.4 s; the dead instance is seen after 2 s; start-up is ~1 s.
    assert took < 30, f"took {took:.1f}s"
    accepted = Counter(line["sub_task_id"] for line in read_outbox(outbox) if line["accepted"])
    assert len(accepted) == total and set(accepted.values()) == {1}


def test_a_restarted_worker_releases_what_its_crashed_predecessor_held(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.0)
    make_contacts(engine, 40)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    real_mark_sending = worker_mod.mark_sending
    calls = {"n": 0}

    def failing_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("connection lost")  # the claim is held, nothing sent
        return real_mark_sending(*args, **kwargs)

    monkeypatch.setattr(worker_mod, "mark_sending", failing_once)
    settings = Settings(
        idle_poll_seconds=0.05,
        supervisor_seconds=0.1,
        maintenance_seconds=0.1,
        restart_backoff_seconds=0.1,
        lease_seconds=30,
    )
    supervisor = Supervisor(engine, settings, exit_when_idle=True)
    thread = threading.Thread(target=lambda: asyncio.run(supervisor.run()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the claimed rows waited for their 30 s lease"
    assert calls["n"] >= 2
    assert status_counts(engine, task_id) == {"sent": 40}
    assert task_status(engine, task_id) == "completed"
    assert time.monotonic() - started < 20
