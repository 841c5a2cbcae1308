"""The database stops under a running `edm serve`, for real, and comes back.

A private PostgreSQL cluster (its own initdb, port and socket directory: the machine's
shared server is never touched) is stopped with `pg_ctl stop -m fast` while a task is
being sent. During the outage `GET /health` says the database is unreachable (503),
`GET /health/live` still answers, `edm health` exits 1, a webhook is refused with 503 (so
its sender retries) and the process stays up. Once the database is back the server
recovers by itself: health is ok again, the task completes with every sub-task accepted
by the provider exactly once, and a webhook is stored.

PostgreSQL only: SQLite has no server to stop. Locally a missing initdb/pg_ctl skips;
in CI (CI=true) it fails.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.db import open_database
from tests.helpers import (
    FAST_ENV,
    child_env,
    make_contacts,
    read_outbox,
    scalar,
    status_counts,
    task_status,
    wait_for,
)
from tests.test_serve import free_port

# Debian's layout, newest version first; EDM_TEST_PG_BIN first of all, PATH last.
PG_BIN_DIRS = sorted(
    glob.glob("/usr/lib/postgresql/*/bin"),
    key=lambda d: (len(d.split("/")[-2]), d.split("/")[-2]),
    reverse=True,
)
CONTACTS = 120
INTERVAL = 0.04  # about 25 sends a second: the task takes about 5 s of sending
TOKEN = "outage-token"


def _pg_tool(name: str) -> str | None:
    for directory in (os.environ.get("EDM_TEST_PG_BIN", ""), *PG_BIN_DIRS):
        if directory and (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    return shutil.which(name)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"a private PostgreSQL is required in CI: {reason}")
    pytest.skip(reason)


class Cluster:
    """A throwaway PostgreSQL cluster: trust auth, loopback only, a socket dir of its own.

    initdb refuses to run as root, so as root every tool runs as the `postgres` user on
    a directory it owns."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.pg_ctl = pg_ctl
        # Under /tmp: the postgres user must reach it (pytest's tmp_path is private to
        # root) and a socket path is limited to about 100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="edm-outage-", dir="/tmp"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self.sockets.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                shutil.chown(self.root, "postgres", "postgres")
                shutil.chown(self.sockets, "postgres", "postgres")
            except LookupError:
                shutil.rmtree(self.root)
                _unavailable("running as root and there is no `postgres` user to run initdb")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            initdb,
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{log}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k '{self.sockets}' -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl, "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.log),
            "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("initdb and pg_ctl not found (set EDM_TEST_PG_BIN)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root and runuser is not available to run initdb as postgres")
    cluster = Cluster(initdb, pg_ctl)
    try:
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE edm")
        cluster.url = cluster.url.rsplit("/", 1)[0] + "/edm"
        yield cluster
    finally:
        cluster.remove()


class Server:
    """`edm serve` (with its workers) as a subprocess, its output kept in files."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.err_path = log_dir / "serve.err"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edm", "serve", "--port", str(self.port)],
            env=env,
            stdout=(log_dir / "serve.out").open("w"),
            stderr=self.err_path.open("w"),
        )

    def stderr(self) -> str:
        return self.err_path.read_text()[-4000:]

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.base}{path}", timeout=5)
        except httpx.HTTPError:
            return None

    def post_event(self, sub_task_id: int, event_id: str) -> httpx.Response:
        body = {"event": "opened", "subtask_id": sub_task_id, "timestamp": 1, "event_id": event_id}
        return httpx.post(
            f"{self.base}/api/webhooks/generic",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

    def assert_alive(self) -> None:
        assert self.process.poll() is None, (
            f"edm serve exited with {self.process.returncode}:\n{self.stderr()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _outbox_lines(path: Path) -> int:
    """Lines the sandbox finished writing (a line being written has no newline yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _database_check(answer: httpx.Response | None) -> dict | None:
    if answer is None or answer.status_code not in (200, 503):
        return None
    return next((c for c in answer.json()["checks"] if c["name"] == "database"), None)


def test_database_stopped_under_a_running_server(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    outbox = tmp_path / "outbox.jsonl"
    engine = open_database(cluster.url)
    services_mod.add_service(
        engine, "s", "sandbox", INTERVAL, options={"outbox": str(outbox), "latency": "0.01"}
    )
    make_contacts(engine, CONTACTS)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    first_sub_task = int(scalar(engine, "SELECT min(id) FROM sub_tasks"))
    engine.dispose()

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env = child_env(
        {**base_env, **FAST_ENV},
        EDM_DATABASE_URL=cluster.url,
        EDM_HEALTH_CACHE_SECONDS="0",
        EDM_WEBHOOK_TOKEN=TOKEN,
        EDM_PUBLIC_URL="https://mail.example.org/edm",
    )
    server = Server(env, tmp_path)
    try:
        engine = open_database(cluster.url, migrate=False)
        # -- sending ------------------------------------------------------------------------
        wait_for(
            lambda: server.process.poll() is not None or _outbox_lines(outbox) >= 20,
            30,
            "the task to start sending",
        )
        server.assert_alive()
        # Stored, and the sandbox token is now known to the app: during the outage a
        # webhook passes authentication and meets the failed commit of the event log.
        before = server.post_event(first_sub_task, "before-outage")
        assert before.status_code == 200, before.text
        before_id = before.json()["request_id"]
        engine.dispose()  # the test's own connections do not outlive the server
        cluster.stop("fast")
        stopped_at = time.monotonic()
        sent_before = _outbox_lines(outbox)
        assert sent_before < CONTACTS, "the task finished before the database stopped"

        # -- the outage ---------------------------------------------------------------------
        seen: dict[str, httpx.Response | None] = {}

        def health_says_unreachable() -> bool:
            seen["health"] = answer = server.get("/health")
            database = _database_check(answer)
            return (
                answer is not None
                and answer.status_code == 503
                and database is not None
                and database["status"] == "critical"
            )

        wait_for(health_says_unreachable, 5, "GET /health to report the database", 0.1)
        health = seen["health"]
        assert health is not None
        database = _database_check(health)
        assert database is not None
        assert health.json()["status"] == "critical"
        assert database["message"].startswith("unreachable: "), database
        assert [c["name"] for c in health.json()["checks"]] == ["database"]

        live = server.get("/health/live")
        assert live is not None and live.status_code == 200, live
        assert live.json() == {"status": "ok"}

        cli = subprocess.run(
            [sys.executable, "-m", "edm", "health", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert cli.returncode == 1, cli.stdout + cli.stderr
        report = json.loads(cli.stdout)
        assert report["status"] == "critical"
        assert report["checks"][0]["name"] == "database"
        assert report["checks"][0]["status"] == "critical"
        assert report["checks"][0]["message"].startswith("unreachable: ")

        # A webhook the database cannot take: 503, so the provider retries; a 2xx here
        # would be an event acknowledged and lost.
        during = server.post_event(first_sub_task, "during-outage")
        assert during.status_code == 503, during.text
        assert during.json()["error"]["code"] == "database_unavailable"
        # EngageLab's endpoint reads its services' keys first: 503 too, never a 401.
        engagelab = httpx.post(f"{server.base}/api/webhooks/mail-event", json=[], timeout=10)
        assert engagelab.status_code == 503, engagelab.text

        # The process lives through the outage: no exit, no crash loop out of it.
        while time.monotonic() - stopped_at < 4.0:
            server.assert_alive()
            time.sleep(0.2)
        live = server.get("/health/live")
        assert live is not None and live.status_code == 200

        # -- recovery -----------------------------------------------------------------------
        cluster.start()
        restarted_at = time.monotonic()

        def healthy() -> bool:
            server.assert_alive()
            answer = server.get("/health")
            seen["health"] = answer
            return answer is not None and answer.status_code == 200

        wait_for(healthy, 15, "GET /health to answer 200 again", 0.1)
        database = _database_check(seen["health"])
        assert database is not None and database["status"] == "ok", database
        healthy_after = time.monotonic() - restarted_at

        engine = open_database(cluster.url, migrate=False)
        wait_for(
            lambda: (
                server.process.poll() is not None or task_status(engine, task_id) == "completed"
            ),
            30,
            "the task to complete after the outage",
            0.1,
        )
        server.assert_alive()
        assert status_counts(engine, task_id) == {"sent": CONTACTS}

        # Every sub-task accepted by the provider exactly once. A row whose answer came
        # while the database was down is resent with its own idempotency key (the
        # provider's de-duplication answers "duplicate"): never a second acceptance.
        lines = read_outbox(outbox)
        accepted = Counter(line["sub_task_id"] for line in lines if line["accepted"])
        assert len(accepted) == CONTACTS
        assert set(accepted.values()) == {1}, [k for k, n in accepted.items() if n > 1]
        others = [line for line in lines if not line["accepted"]]
        assert all(line["duplicate"] for line in others), others
        # One `sent` attempt per sub-task, carrying the message id the provider accepted.
        with engine.connect() as conn:
            attempts = Counter(
                conn.execute(
                    text("SELECT sub_task_id FROM send_attempts WHERE outcome = 'sent'")
                ).scalars()
            )
        assert len(attempts) == CONTACTS
        assert set(attempts.values()) == {1}, [k for k, n in attempts.items() if n > 1]
        by_key = {line["idempotency_key"]: line["message_id"] for line in lines if line["accepted"]}
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT idempotency_key, provider_message_id FROM sub_tasks"))
            assert all(by_key[key] == message_id for key, message_id in rows)

        # The webhook refused during the outage was not kept; one posted now is.
        after = server.post_event(first_sub_task, "after-recovery")
        assert after.status_code == 200, after.text
        request_id = after.json()["request_id"]
        assert scalar(engine, "SELECT count(*) FROM webhook_requests WHERE id = :i", i=request_id)
        wait_for(
            lambda: (
                scalar(engine, "SELECT status FROM events WHERE dedupe_key = 'id:after-recovery'")
                == "applied"
            ),
            10,
            "the webhook posted after recovery to be applied",
        )
        assert not scalar(
            engine, "SELECT count(*) FROM events WHERE dedupe_key = 'id:during-outage'"
        )
        # The request answered 200 just before the stop is kept. If the stop caught it
        # being processed, it is taken again once the database answers (not only when it
        # is STALE_PROCESSING_SECONDS old).
        before_status = scalar(
            engine, "SELECT status FROM webhook_requests WHERE id = :i", i=before_id
        )
        assert before_status in ("received", "processing", "processed")
        wait_for(
            lambda: (
                scalar(engine, "SELECT status FROM events WHERE dedupe_key = 'id:before-outage'")
                == "applied"
                and scalar(engine, "SELECT status FROM webhook_requests WHERE id = :i", i=before_id)
                == "processed"
            ),
            10,
            "the webhook answered before the outage to be processed",
        )
        server.assert_alive()
        restarts = scalar(engine, "SELECT max(restarts) FROM worker_heartbeats")
        print(
            f"\noutage: {sent_before}/{CONTACTS} sent before the stop, {len(others)} same-key"
            f" resends, {restarts} worker restarts, the request before the stop"
            f" {before_status}, /health ok {healthy_after:.1f} s after the database restarted,"
            f" {time.monotonic() - started:.1f} s in all"
        )
    finally:
        engine.dispose()
        server.stop()
    assert server.process.returncode == 0, server.stderr()
