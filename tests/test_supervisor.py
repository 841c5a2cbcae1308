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


def test_notify_wakes_idle_workers_and_the_supervisor_at_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL new work and new services arrive by NOTIFY, not by polling."""
    import os

    from edm.config import get_settings
    from edm.db import open_database
    from tests.helpers import FAST_ENV, sent_by_service

    # Polls of 30 s: a wake-up within 10 s can only be the NOTIFY.
    slow_polls = {"EDM_IDLE_POLL_SECONDS": "30", "EDM_SUPERVISOR_SECONDS": "30"}
    env = {**os.environ, **FAST_ENV, **slow_polls, "EDM_DATABASE_URL": pg_url}
    monkeypatch.setenv("EDM_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    engine = open_database(pg_url)
    services_mod.add_service(engine, "first", "sandbox", 0.0)
    make_contacts(engine, 10)
    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: "started 1/1" in worker.stdout, 20, "start-up")
        task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
        wait_for(lambda: status_counts(engine, task_id)["sent"] == 10, 10, "the new task")
        services_mod.add_service(engine, "second", "sandbox", 0.0)
        second = tasks_mod.create_task(
            engine, "t2", "s", text_body="x", services=["second"], start=True
        )
        wait_for(lambda: sent_by_service(engine, second)["second"] == 10, 10, "the new service")
    finally:
        assert worker.terminate() == 0
        engine.dispose()
        get_settings.cache_clear()


def test_changed_options_restart_the_worker(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    services_mod.add_service(engine, "s", "sandbox", 0.05, options={"outbox": str(first)})
    make_contacts(engine, 300)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: first.exists() and first.read_text().count("\n") >= 3, 20, "sends")
        services_mod.update_service(engine, "s", interval=0.01, options={"outbox": str(second)})
        wait_for(
            lambda: second.exists() and second.read_text().count("\n") >= 3,
            5,
            "sends into the new outbox",
        )
    finally:
        assert worker.terminate() == 0
    assert status_counts(engine, task_id)["sent"] >= 6
