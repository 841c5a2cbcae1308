"""`edm serve` as a user runs it: a real process that prints where to point webhooks,
answers HTTP, keeps upkeep running, and exits 0 within 10 s of SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
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
        assert ("started 0/0 services" in printed) == (not args)

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
