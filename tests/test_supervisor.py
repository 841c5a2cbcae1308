"""The supervisor keeps one live worker per usable service and restarts the ones that die."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.scheduler import worker as worker_mod
from edm.scheduler.supervisor import Supervisor
from tests.helpers import Worker, make_contacts, status_counts, wait_for

FAST = Settings(
    idle_poll_seconds=0.05,
    supervisor_seconds=0.1,
    maintenance_seconds=0.1,
    restart_backoff_seconds=0.1,
    lease_seconds=2,
)


def _run_in_thread(supervisor: Supervisor) -> threading.Thread:
    thread = threading.Thread(target=lambda: asyncio.run(supervisor.run()), daemon=True)
    thread.start()
    return thread


def test_a_crashed_worker_is_restarted_and_its_error_recorded(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.0)
    make_contacts(engine, 20)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    real_claim = worker_mod.claim
    calls = {"n": 0}

    def failing_twice(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("database went away")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker_mod, "claim", failing_twice)
    said: list[str] = []
    supervisor = Supervisor(engine, FAST, exit_when_idle=True, say=said.append)
    thread = _run_in_thread(supervisor)
    thread.join(30)
    assert not thread.is_alive()
    assert status_counts(engine, task_id) == {"sent": 20}
    with engine.connect() as conn:
        error = conn.execute(text("SELECT last_error FROM services")).scalar()
    assert "worker crashed: RuntimeError: database went away" in error
    assert said[0] == "started 1/1 services"


def test_startup_reports_services_that_could_not_start(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "good", "sandbox", 0.1)
    services_mod.add_service(engine, "bad", "sandbox", 0.1)
    services_mod.add_service(engine, "off", "sandbox", 0.1)
    services_mod.set_enabled(engine, "off", False)
    with engine.begin() as conn:  # options no provider accepts, as a hand-edited row might have
        conn.execute(
            text("UPDATE services SET options = :o WHERE name = 'bad'"), {"o": '{"colour": "blue"}'}
        )
    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: "started" in worker.stdout, 20, "the start-up line")
        assert "started 1/2 services" in worker.stdout
        wait_for(lambda: _alive(engine) == {"good": 1}, 5, "heartbeats")
    finally:
        assert worker.terminate() == 0
    view = {v.name: v for v in services_mod.list_services(engine)}
    assert "unknown sandbox option(s): colour" in view["bad"].last_error


def _alive(engine: Engine) -> dict[str, int]:
    return {v.name: v.workers_alive for v in services_mod.list_services(engine) if v.workers_alive}
