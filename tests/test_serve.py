"""`edm serve` as a user runs it: a real process that prints where to point webhooks,
answers HTTP, keeps upkeep running, and exits 0 within 10 s of SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from edm.events.intake import log_request
from tests.helpers import child_env, wait_for

PUBLIC = "https://mail.example.org/edm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args", [[], ["--no-worker"]], ids=["with-worker", "no-worker"])
def test_serve_answers_and_stops_on_sigterm(
    env: dict[str, str], engine: Engine, tmp_path: Path, args: list[str]
) -> None:
    port = free_port()
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "edm", "serve", "--port", str(port), *args],
        env=child_env(env, EDM_PUBLIC_URL=PUBLIC, EDM_WEBHOOK_TOKEN="t"),
        stdout=out.open("w"),
        stderr=err.open("w"),
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def live() -> bool:
            try:
                return httpx.get(f"{base}/health/live", timeout=1).json() == {"status": "ok"}
            except httpx.HTTPError:
                return process.poll() is not None

        wait_for(live, 20, "edm serve to answer")
        assert process.poll() is None, err.read_text()[-3000:]
        printed = out.read_text()
        assert printed.splitlines()[0].startswith("database: ")
        for path in ("/api/webhooks/mail-event", "/api/webhooks/generic", "/unsubscribe/"):
            assert f"{PUBLIC}{path}" in printed
        if not args:
            # The supervisor says it once it has synced, which may come after the first answer.
            wait_for(lambda: "started 0/0 services" in out.read_text(), 10, "the supervisor")

        # Upkeep runs either way: a request logged but never processed is picked up.
        body = json.dumps({"event": "delivered", "subtask_id": 1, "timestamp": 1}).encode()
        request_id = log_request(engine, "generic", {}, body)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE webhook_requests SET received_at = received_at - 60 WHERE id = :id"),
                {"id": request_id},
            )
        wait_for(
            lambda: _request_status(engine, request_id) == "processed", 10, "upkeep to process it"
        )
        answer = httpx.post(
            f"{base}/api/webhooks/generic", content=body, headers={"Authorization": "Bearer t"}
        )
        assert answer.status_code == 200, answer.text
        assert ("started 0/0 services" in out.read_text()) == (not args)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, err.read_text()[-3000:]
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _request_status(engine: Engine, request_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status FROM webhook_requests WHERE id = :id"), {"id": request_id}
        ).scalar()


def test_a_server_killed_mid_flood_loses_no_answered_request(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "edm", "serve", "--port", str(port), "--no-worker"],
            env=child_env(env, EDM_WEBHOOK_TOKEN="t"),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "serve.err").open("a"),
        )

        def live() -> bool:
            try:
                return httpx.get(f"{base}/health/live", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(live, 20, "edm serve to answer")
        return process

    answered: dict[str, int] = {}
    stop = threading.Event()

    def post(client_id: int) -> None:
        auth = {"Authorization": "Bearer t"}
        with httpx.Client(timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"c{client_id}-{n}"
                body = {"event": "opened", "subtask_id": 1, "timestamp": n, "event_id": key}
                try:
                    answer = client.post(f"{base}/api/webhooks/generic", json=body, headers=auth)
                except httpx.HTTPError:
                    continue  # the server died under this request: never answered
                if answer.status_code == 200:
                    answered[key] = answer.json()["request_id"]

    process = start()
    clients = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    try:
        for thread in clients:
            thread.start()
        wait_for(lambda: len(answered) >= 100, 20, "requests answered")
        process.kill()  # SIGKILL while requests are in flight and in the commit queue
        process.wait()
        stop.set()
        for thread in clients:
            thread.join()
        process = start()
        with engine.begin() as conn:  # what the dead process held is now old enough to retake
            conn.execute(text("UPDATE webhook_requests SET processed_at = 0, received_at = 0"))

        def every_answered_event_recorded() -> bool:
            with engine.connect() as conn:
                keys = set(conn.execute(text("SELECT dedupe_key FROM events")).scalars())
            return all(f"id:{key}" in keys for key in answered)

        wait_for(every_answered_event_recorded, 20, "every answered event recorded")
    finally:
        stop.set()
        process.kill()
        process.wait()
    with engine.connect() as conn:
        stored = set(conn.execute(text("SELECT id FROM webhook_requests")).scalars())
    assert set(answered.values()) <= stored
