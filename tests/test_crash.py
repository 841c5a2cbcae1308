"""A worker killed with SIGKILL at random moments loses nothing and sends nothing twice."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine

from edm import services as services_mod
from edm import tasks as tasks_mod
from tests.helpers import Worker, make_contacts, read_outbox, scalar, status_counts, task_status

KILLS = 6


def test_sigkill_mid_run_recovers_without_duplicates(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    options = {"outbox": str(outbox), "latency": "0.02"}
    # About 80 sends a second: each short life of a worker sends only part of the task.
    services_mod.add_service(engine, "one", "sandbox", 0.02, options=options)
    services_mod.add_service(engine, "two", "sandbox", 0.03, options=options)
    total = 600
    make_contacts(engine, total)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    kills = 0
    for _ in range(KILLS):
        worker = Worker(env, tmp_path)
        time.sleep(rng.uniform(1.0, 2.2))  # start-up takes about a second
        in_flight = status_counts(engine, task_id)
        worker.kill()
        kills += 1
        if in_flight["pending"] == 0:
            break
    assert kills >= 5, f"the task finished before 5 kills (seed {seed})"
    assert status_counts(engine, task_id)["sent"] < total, "no kill landed mid-run"

    final = Worker(env, tmp_path, "--exit-when-idle")
    assert final.wait(90) == 0, final.stderr[-3000:]

    assert status_counts(engine, task_id) == {"sent": total}, f"seed {seed}"
    assert task_status(engine, task_id) == "completed"
    lines = read_outbox(outbox)
    accepted = Counter(line["sub_task_id"] for line in lines if line["accepted"])
    assert len(accepted) == total, f"seed {seed}"
    assert set(accepted.values()) == {1}, f"a sub-task was accepted twice (seed {seed})"
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM sub_tasks WHERE status IN ('allocated', 'sending', 'unknown')",
        )
        == 0
    )
    # Every sent sub-task carries the message id the provider accepted for its key.
    by_key = {line["idempotency_key"]: line["message_id"] for line in lines if line["accepted"]}
    with engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT idempotency_key, provider_message_id FROM sub_tasks"))
        assert all(by_key[key] == message_id for key, message_id in rows)
