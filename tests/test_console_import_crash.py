"""An import started from the console whose server is killed halfway: nothing of it is
kept, and the same file imported again after a restart gives every contact once."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from sqlalchemy import Engine

from edm.api_tokens import create_token
from tests.browser import Server
from tests.helpers import scalar, wait_for

ROWS = 100_000
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
JOB = re.compile(r'hx-get="(/console/fragments/imports/[\w-]+)"')


def _signed_in(client: httpx.Client, token: str) -> str:
    """Signs `client` in; the session's CSRF value."""
    csrf = CSRF.search(client.get("/login").text)
    assert csrf
    client.post("/login", data={"token": token, "csrf": csrf[1]})
    page = CSRF.search(client.get("/console/contacts").text)
    assert page
    return page[1]


def _upload(client: httpx.Client, csrf: str, body: bytes) -> str:
    started = client.post(
        "/console/contacts/import",
        params={"list": "big", "file": "big.csv"},
        content=body,
        headers={"content-type": "text/csv", "x-csrf-token": csrf},
    )
    assert started.status_code == 202, started.text
    job = JOB.search(started.text)
    assert job
    return job[1]


def test_a_server_killed_mid_import_keeps_nothing_of_it(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    body = ("email,name\n" + "".join(f"r{i}@example.com,R{i}\n" for i in range(ROWS))).encode()
    token = create_token(engine, "ops", "admin")

    server = Server(env, tmp_path / "first")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job = _upload(client, _signed_in(client, token), body)
            # Killed once the import writes (its second pass), before it commits.
            # The poll reads no database: it answers while the import holds SQLite's lock.
            wait_for(lambda: "importing" in client.get(job).text, 30, "the import to write")
            server.process.kill()
            server.process.wait()
    finally:
        server.stop()
    assert scalar(engine, "SELECT count(*) FROM contacts") == 0
    assert scalar(engine, "SELECT count(*) FROM lists") == 0

    server = Server(env, tmp_path / "second")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job = _upload(client, _signed_in(client, token), body)
            wait_for(lambda: "hx-trigger" not in client.get(job).text, 60, "the import to end")
            assert f"{ROWS:,} contact(s) of {ROWS:,} row(s)" in client.get(job).text
    finally:
        server.stop()
    assert scalar(engine, "SELECT count(DISTINCT email) FROM contacts") == ROWS
    assert scalar(engine, "SELECT count(*) FROM list_members") == ROWS
