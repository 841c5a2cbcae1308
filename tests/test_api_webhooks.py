"""Webhooks over real HTTP: authenticated requests are kept and applied after the answer;
refused ones are never stored; bad bodies are kept as invalid and answered 400; a
database outage is a 503 the sender retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm.api import auth
from edm.config import Settings
from edm.db import open_database
from edm.db.engine import make_engine
from edm.db.secrets import webhook_token
from edm.providers.base import OptionError
from edm.providers.engagelab import EngageLabProvider
from tests.api_server import api_server, sent_task
from tests.helpers import scalar, wait_for

TOKEN = "test-webhook-token"
MAX_BYTES = 64 * 1024
KEY = "engagelab-app-key"
ENGAGELAB_OPTIONS = {"api_user": "u", "api_key": "k"}


def settings(**overrides: object) -> Settings:
    return Settings(**{"webhook_token": TOKEN, "webhook_max_bytes": MAX_BYTES, **overrides})


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, settings()) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str, user: str = "edm") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def delivered(sub_task_id: int, at: float = 2000.0, **extra: object) -> dict:
    return {"event": "delivered", "subtask_id": sub_task_id, "timestamp": at, **extra}


def requests_by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM webhook_requests GROUP BY status"))
        return {status: n for status, n in rows}


def fact(engine: Engine, column: str, sub_task_id: int) -> object:
    return scalar(engine, f"SELECT {column} FROM sub_tasks WHERE id = :id", id=sub_task_id)


def wait_applied(engine: Engine, column: str, sub_task_id: int) -> object:
    wait_for(lambda: fact(engine, column, sub_task_id) is not None, 5, f"{column} applied")
    return fact(engine, column, sub_task_id)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and set(error) == {"code", "message", "field"}
    return error


def test_generic_webhook_end_to_end(client: httpx.Client, database: Engine) -> None:
    (first, _), (second, _) = sent_task(database, ["a@example.com", "b@example.com"])
    rejected_before = auth.rejected["generic"]

    answer = client.post("/api/webhooks/generic", json=delivered(first), headers=bearer())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "accepted", "request_id": answer.json()["request_id"]}
    delivered_at = wait_applied(database, "delivered_at", first)
    assert delivered_at == 2000.0

    # Refused before anything is read: never stored, counted.
    body = json.dumps(delivered(first, 3000.0))
    for headers in ({}, bearer("wrong"), basic("wrong"), {"Authorization": "Token " + TOKEN}):
        refused = client.post("/api/webhooks/generic", content=body, headers=headers)
        assert_error(refused, 401, "unauthenticated")
    assert auth.rejected["generic"] == rejected_before + 4
    # Too large: refused from Content-Length, and while streaming when there is none.
    big = b"[" + b" " * MAX_BYTES + b"]"
    assert_error(
        client.post("/api/webhooks/generic", content=big, headers=bearer()), 413, "too_large"
    )
    chunked = client.post(
        "/api/webhooks/generic", content=iter([big[:1000], big[1000:]]), headers=bearer()
    )
    assert_error(chunked, 413, "too_large")
    assert requests_by_status(database) == {"processed": 1}

    # Authenticated but unreadable: kept, answered 400 naming the problem, marked invalid.
    not_json = client.post("/api/webhooks/generic", content=b"{oops", headers=bearer())
    assert "not JSON" in assert_error(not_json, 400, "invalid_json")["message"]
    wrong = client.post(
        "/api/webhooks/generic", json={**delivered(second), "subtaskid": 1}, headers=bearer()
    )
    assert "subtaskid" in assert_error(wrong, 400, "invalid_body")["message"]
    wait_for(
        lambda: requests_by_status(database) == {"processed": 1, "invalid": 2},
        5,
        "bad bodies marked invalid",
    )

    # The server still answers, and what was applied before is unchanged.
    assert fact(database, "delivered_at", first) == delivered_at
    assert fact(database, "delivered_at", second) is None
    again = client.post("/api/webhooks/generic", json=delivered(second), headers=basic(TOKEN))
    assert again.status_code == 200, again.text
    assert wait_applied(database, "delivered_at", second) == 2000.0
    assert fact(database, "delivered_at", first) == delivered_at


def test_requests_committed_together_each_get_their_own_id(
    client: httpx.Client, database: Engine
) -> None:
    """Requests arriving at once share a commit; each answer still names its own request,
    and a bad body among them is answered 400 alone."""
    bodies = [json.dumps(delivered(1, 3000.0 + n, event_id=f"c{n}")).encode() for n in range(60)]
    bodies[7] = b"{broken"

    def post(body: bytes) -> httpx.Response:
        return client.post("/api/webhooks/generic", content=body, headers=bearer())

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, bodies))
    assert_error(answers[7], 400, "invalid_json")
    with database.connect() as conn:
        stored = dict(conn.execute(text("SELECT id, body FROM webhook_requests")).all())
    assert len(stored) == len(bodies)
    for n, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        if n != 7:
            assert answer.status_code == 200, answer.text
            assert stored[answer.json()["request_id"]] == body.decode()


def test_json_the_pipeline_refuses_is_400(client: httpx.Client, database: Engine) -> None:
    # A NUL byte too: PostgreSQL's text cannot hold it, yet the body is kept as invalid.
    bodies = (b'{"event": NaN}', b"[1, 2", "\u00e9".encode("latin-1"), b'{"event": "a\x00"}')
    for body in bodies:
        answer = client.post("/api/webhooks/generic", content=body, headers=bearer())
        assert_error(answer, 400, "invalid_json")
    assert scalar(database, "SELECT count(*) FROM webhook_requests") == len(bodies)
    nested = client.post("/api/webhooks/generic", content=b"[" * 50_000, headers=bearer())
    assert_error(nested, 400, "invalid_json")
    assert client.get("/health/live").status_code == 200


def test_a_list_body_and_unknown_routes(client: httpx.Client, database: Engine) -> None:
    ((sub_task, _),) = sent_task(database, ["a@example.com"])
    events = [delivered(sub_task), {"event": "opened", "subtask_id": sub_task, "timestamp": 2100}]
    assert client.post("/api/webhooks/generic", json=events, headers=bearer()).status_code == 200
    wait_for(lambda: fact(database, "open_count", sub_task) == 1, 5, "open applied")
    assert_error(client.get("/api/webhooks/nowhere"), 404, "not_found")
    assert_error(client.get("/api/webhooks/generic"), 405, "method_not_allowed")
    assert client.get("/health/live").json() == {"status": "ok"}


def test_sandbox_token_while_webhook_token_unset(
    client: httpx.Client, db: Engine, database: Engine
) -> None:
    ((sub_task, _),) = sent_task(database, ["a@example.com"])
    sandbox = webhook_token(database)
    with api_server(db, settings(webhook_token="")) as unset:
        refused = unset.post("/api/webhooks/generic", json=delivered(sub_task), headers=bearer())
        assert "EDM_WEBHOOK_TOKEN" in assert_error(refused, 401, "unauthenticated")["message"]
        accepted = unset.post(
            "/api/webhooks/generic", json=delivered(sub_task), headers=bearer(sandbox)
        )
        assert accepted.status_code == 200, accepted.text
    # Accepted beside EDM_WEBHOOK_TOKEN too, as a Basic password.
    also = client.post(
        "/api/webhooks/generic", json=delivered(sub_task, 2500.0), headers=basic(sandbox)
    )
    assert also.status_code == 200, also.text
    assert wait_applied(database, "delivered_at", sub_task) == 2000.0
    assert (
        requests_by_status(database) == {"processed": 2}
        or wait_for(lambda: requests_by_status(database) == {"processed": 2}, 5, "both processed")
        is None
    )


def engagelab_headers(key: str, recipe: str, timestamp: str = "1700000000") -> dict[str, str]:
    app_key = "email"
    if recipe == "md5":
        signature = hashlib.md5((timestamp + app_key + key).encode()).hexdigest()
    else:
        signature = hmac.new(key.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
    return {
        "X-WebHook-Timestamp": timestamp,
        "X-WebHook-AppKey": app_key,
        "X-WebHook-Signature": signature,
    }


def engagelab_event(sub_task: int, status: str = "delivered", itime: int = 1700000009450) -> dict:
    return {
        "server": "email",
        "message_id": "1700000000000_100001_12345_6789.sc-10_43_7_16-inbound",
        "to": "a@example.com",
        "itime": itime,
        "status": {
            "message_status": status,
            "status_data": {"email_id": f"pm-{sub_task}", "task_id": "-1"},
        },
        "custom_args": {"edm_subtask": str(sub_task)},
    }


def test_engagelab_signatures(client: httpx.Client, database: Engine) -> None:
    ((sub_task, _),) = sent_task(database, ["a@example.com"])
    services_mod.add_service(
        database,
        "el",
        "engagelab",
        31.0,
        options={**ENGAGELAB_OPTIONS, "webhook_verify": "true", "webhook_key": KEY},
    )
    body = json.dumps(engagelab_event(sub_task)).encode()
    for path, recipe in (("/api/webhooks/mail-event", "md5"), ("/api/webhooks/engagelab", "hmac")):
        signed = client.post(path, content=body, headers=engagelab_headers(KEY, recipe))
        assert signed.status_code == 200, signed.text
    assert wait_applied(database, "delivered_at", sub_task) == 1700000009.45

    before = auth.rejected["engagelab"]
    for headers in (
        {},
        engagelab_headers("another-key", "md5"),
        {**engagelab_headers(KEY, "hmac"), "X-WebHook-Timestamp": "1700000001"},
    ):
        refused = client.post("/api/webhooks/mail-event", content=body, headers=headers)
        assert_error(refused, 401, "unauthenticated")
    assert auth.rejected["engagelab"] == before + 3
    wait_for(lambda: requests_by_status(database) == {"processed": 2}, 5, "signed ones processed")


def test_engagelab_unsigned_without_a_verifying_service(
    client: httpx.Client, database: Engine
) -> None:
    ((sub_task, _),) = sent_task(database, ["a@example.com"])
    services_mod.add_service(
        database, "el", "engagelab", 31.0, options={**ENGAGELAB_OPTIONS, "webhook_verify": "false"}
    )
    answer = client.post("/api/webhooks/mail-event", json=engagelab_event(sub_task))
    assert answer.status_code == 200, answer.text
    assert wait_applied(database, "delivered_at", sub_task) == 1700000009.45
    shape = client.post("/api/webhooks/mail-event", json={"server": "email", "itime": 1})
    assert "status" in assert_error(shape, 400, "invalid_body")["message"]


def test_webhook_verify_needs_a_key() -> None:
    with pytest.raises(OptionError, match="webhook_verify needs webhook_key"):
        EngageLabProvider("el", {**ENGAGELAB_OPTIONS, "webhook_verify": "true"})
    EngageLabProvider("el", {**ENGAGELAB_OPTIONS, "webhook_verify": "true", "webhook_key": KEY})
    EngageLabProvider("el", ENGAGELAB_OPTIONS)  # verification on by default, nothing to check


def test_an_unreachable_postgresql_is_503(client: httpx.Client, database: Engine) -> None:
    away = make_engine("postgresql://postgres@127.0.0.1:1/edm?connect_timeout=2")
    body = engagelab_event(1)
    with api_server(away, settings()) as unreachable:
        for path in ("/api/webhooks/generic", "/api/webhooks/mail-event"):
            answer = unreachable.post(path, json=body, headers=bearer())
            assert_error(answer, 503, "database_unavailable")
        assert unreachable.get("/health/live").status_code == 200
    # The same request, to a server whose database is up.
    assert client.post("/api/webhooks/mail-event", json=body).status_code == 200
    away.dispose()


def test_a_vanished_sqlite_database_is_503_until_it_is_back(tmp_path: Path) -> None:
    home = tmp_path / "data"
    home.mkdir()
    engine = open_database(f"sqlite:///{home / 'edm.db'}")
    ((sub_task, _),) = sent_task(engine, ["a@example.com"])
    with api_server(engine, settings()) as client:
        post = lambda: client.post(  # noqa: E731
            "/api/webhooks/generic", json=delivered(sub_task), headers=bearer()
        )
        assert post().status_code == 200
        wait_applied(engine, "delivered_at", sub_task)
        engine.dispose()
        shutil.move(home, tmp_path / "elsewhere")
        assert_error(post(), 503, "database_unavailable")
        engine.dispose()
        shutil.move(tmp_path / "elsewhere", home)
        assert post().status_code == 200
    assert scalar(engine, "SELECT count(*) FROM webhook_requests") == 2
    engine.dispose()
