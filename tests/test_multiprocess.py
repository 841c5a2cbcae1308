"""Several `edm worker` processes on one PostgreSQL share each service's pace."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import get_settings
from edm.db import open_database
from tests.helpers import FAST_ENV, Worker, make_contacts, read_outbox, wait_for


@pytest.mark.parametrize("processes", [2, 3])
def test_workers_never_claim_twice_and_share_the_pace(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    env = {**FAST_ENV, "EDM_DATABASE_URL": pg_url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    import os

    env = {**os.environ, **env}
    engine = open_database(pg_url)
    outbox = tmp_path / "outbox.jsonl"
    intervals = {"slow": 0.31, "fast": 0.18}
    for name, interval in intervals.items():
        services_mod.add_service(engine, name, "sandbox", interval, options={"outbox": str(outbox)})
    make_contacts(engine, 200)
    tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    window = 8.0

    workers = [Worker(env, tmp_path) for _ in range(processes)]
    try:
        wait_for(
            lambda: len({line["service"] for line in read_outbox(outbox)}) == 2,
            20,
            "both services to send",
        )
        first = time.time()
        wait_for(lambda: time.time() > first + window + 1.0, window + 5, "the window")
    finally:
        for worker in workers:
            assert worker.terminate() == 0, worker.stderr[-2000:]

    lines = read_outbox(outbox)
    assert all(line["accepted"] for line in lines), "a key reached the provider twice"
    per_sub_task = Counter(line["sub_task_id"] for line in lines)
    assert set(per_sub_task.values()) == {1}, "a sub-task was sent twice"
    with engine.connect() as conn:
        attempts = conn.execute(
            text(
                "SELECT sub_task_id, count(*) FROM send_attempts GROUP BY sub_task_id"
                " HAVING count(*) > 1"
            )
        ).all()
        claimers = conn.execute(
            text("SELECT count(DISTINCT instance_id) FROM worker_heartbeats")
        ).scalar()
    assert attempts == []
    assert claimers == 0, "workers remove their heartbeats on exit"
    for name, interval in intervals.items():
        times = sorted(line["time"] for line in lines if line["service"] == name)
        in_window = [t for t in times if t < times[0] + window]
        expected = int(window / interval) + 1
        assert abs(len(in_window) - expected) <= 1, (name, len(in_window), expected)
    engine.dispose()
