"""Helpers shared by the tests: running real `edm` processes and reading outcomes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from edm.contacts import add_contacts

# Short intervals and leases so the suite stays fast.
FAST_ENV = {
    "EDM_LEASE_SECONDS": "1.0",
    "EDM_LOOKAHEAD_SECONDS": "0.3",
    "EDM_IDLE_POLL_SECONDS": "0.1",
    "EDM_SUPERVISOR_SECONDS": "0.3",
    "EDM_MAINTENANCE_SECONDS": "0.2",
    "EDM_RETRY_BASE_SECONDS": "0.05",
    "EDM_RETRY_MAX_SECONDS": "0.2",
    "EDM_RESCAN_SECONDS": "0.3",
    "EDM_RESTART_BACKOFF_SECONDS": "0.1",
    "EDM_SHUTDOWN_GRACE_SECONDS": "5",
}


class Worker:
    """One real `edm worker` process, its output kept in files."""

    def __init__(self, env: dict[str, str], log_dir: Path, *args: str) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.stdout_path = log_dir / f"worker-{stamp}.out"
        self.stderr_path = log_dir / f"worker-{stamp}.err"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edm", "worker", *args],
            env=env,
            stdout=self.stdout_path.open("w"),
            stderr=self.stderr_path.open("w"),
        )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker still running after {timeout}s:\n{self.stderr[-3000:]}"
            ) from None

    def terminate(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_contacts(engine: Engine, count: int, prefix: str = "user") -> None:
    add_contacts(
        engine,
        [{"email": f"{prefix}{i:05d}@example.com", "name": f"User {i}"} for i in range(count)],
    )


def status_counts(engine: Engine, task_id: int) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM sub_tasks WHERE task_id = :t GROUP BY status"),
            {"t": task_id},
        )
        return Counter({status: n for status, n in rows})


def sent_by_service(engine: Engine, task_id: int) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.name, count(*) FROM sub_tasks st JOIN services s ON s.id = st.service_id"
                " WHERE st.task_id = :t AND st.status = 'sent' GROUP BY s.name"
            ),
            {"t": task_id},
        )
        return Counter({name: n for name, n in rows})


def scalar(engine: Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def task_status(engine: Engine, task_id: int) -> str:
    return str(scalar(engine, "SELECT status FROM tasks WHERE id = :t", t=task_id))


def read_outbox(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def child_env(env: dict[str, str], **overrides: str) -> dict[str, str]:
    return {**env, **overrides, "PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", "")}


def edm(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr). Anything but a clean exit
    (a traceback) fails the test."""
    from typer.testing import CliRunner

    from edm.cli import app

    result = CliRunner().invoke(app, list(args), input=stdin, terminal_width=200)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def generic_event(kind: str, sub_task_id: int, at: float, event_id: str) -> dict:
    """One event in the generic webhook format; `hard`/`soft` are bounces."""
    if kind in ("hard", "soft"):
        return {
            "event": "bounce",
            "subtask_id": sub_task_id,
            "timestamp": at,
            "event_id": event_id,
            "data": {"bounce_type": kind},
        }
    return {"event": kind, "subtask_id": sub_task_id, "timestamp": at, "event_id": event_id}


def forget_events(engine: Engine) -> None:
    """No event received yet: the log, the facts and the contacts' suppression cleared."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
        conn.execute(text("DELETE FROM webhook_requests"))
        conn.execute(
            text(
                "UPDATE sub_tasks SET delivered_at = NULL, opened_at = NULL, open_count = 0,"
                " clicked_at = NULL, click_count = 0, bounced_at = NULL, bounce_type = NULL,"
                " complained_at = NULL, unsubscribed_at = NULL"
            )
        )
        conn.execute(text("UPDATE contacts SET status = 'active', status_reason = NULL"))
        conn.execute(text("DELETE FROM task_funnels"))


def funnels_kept(engine: Engine) -> bool:
    """Whether every task's kept funnel is what counting its sub-tasks gives."""
    from edm.db.queries import FUNNELS_NOT_KEPT, query

    with engine.connect() as conn:
        drifted = conn.execute(query(FUNNELS_NOT_KEPT, engine.dialect.name), {"limit": 10})
        return not drifted.all()


def shuffled_requests(bodies: list[dict], seed: int, most: int) -> list[object]:
    """The event bodies, some of them twice, shuffled and cut into requests of 1 to `most`
    events (a request of one is the bare event object, as a sender may post it)."""
    rng = random.Random(seed)
    shuffled = bodies + rng.sample(bodies, k=rng.randint(0, len(bodies)))
    rng.shuffle(shuffled)
    requests: list[object] = []
    while shuffled:
        size = rng.randint(1, most)
        requests.append(shuffled[0] if size == 1 else shuffled[:size])
        shuffled = shuffled[size:]
    return requests
