"""`/api/services`, `/api/events` and `/api/health` over real HTTP, on both databases: who
may call them, what they answer, bad input as a 4xx naming the field, and secrets that
never leave the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm.api_tokens import create_token, revoke_token
from edm.config import Settings
from edm.events import pipeline
from edm.events.intake import log_request
from edm.providers.registry import PROVIDERS
from tests.api_server import api_server, sent_task
from tests.helpers import generic_event, read_outbox, scalar, wait_for

SETTINGS = Settings(health_cache_seconds=0)
API_KEY = "el-api-key-never-shown"
WEBHOOK_KEY = "el-webhook-key-never-shown"
ENGAGELAB = {
    "name": "el",
    "provider": "engagelab",
    "interval": 2,
    "daily_quota": 1000,
    "options": {"api_user": "edm", "api_key": API_KEY, "webhook_key": WEBHOOK_KEY},
}


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, SETTINGS) as client:
        yield client


@pytest.fixture
def admin(database: Engine) -> dict[str, str]:
    return bearer(create_token(database, "admin", "admin"))


@pytest.fixture
def reader(database: Engine) -> dict[str, str]:
    return bearer(create_token(database, "reader", "read"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error(answer: httpx.Response, status: int) -> dict:
    """The error of an answer that must be `status`, in the one error shape."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    return body["error"]


def stored_options(engine: Engine, name: str) -> dict[str, str]:
    return next(v.options for v in services_mod.list_services(engine) if v.name == name)


def test_the_api_speaks_of_the_same_providers_as_the_registry() -> None:
    from edm.api.resources.services import ProviderName

    assert set(ProviderName.__args__) == set(PROVIDERS)


# -- who may call ---------------------------------------------------------------------------
WRITES = [
    ("POST", "/api/services", {"name": "n", "provider": "sandbox", "interval": 0}),
    ("PATCH", "/api/services/s", {"interval": 5}),
    ("POST", "/api/services/s/test", {"to": "me@example.com"}),
    ("POST", "/api/services/s/freeze", {"reason": "r"}),
    ("POST", "/api/services/s/unfreeze", None),
    ("POST", "/api/services/s/enable", None),
    ("POST", "/api/services/s/disable", None),
    ("POST", "/api/events/reprocess", {"status": "unmatched"}),
]
READS = ["/api/services", "/api/services/s", "/api/events", "/api/health"]


def test_every_route_needs_a_live_token_and_writing_needs_admin(
    database: Engine, client: httpx.Client, reader: dict[str, str]
) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    revoked = bearer(create_token(database, "revoked", "admin"))
    revoke_token(database, "revoked")
    anonymous = [{}, bearer("edm_wrong"), {"Authorization": "Basic abc"}, revoked]
    for method, path, body in WRITES + [("GET", path, None) for path in READS]:
        for headers in anonymous:
            answer = client.request(method, path, json=body, headers=headers)
            assert error(answer, 401)["code"] == "unauthorized", (method, path, headers)
            assert answer.headers["www-authenticate"].startswith("Bearer")
    for method, path, body in WRITES:
        answer = client.request(method, path, json=body, headers=reader)
        assert error(answer, 403)["code"] == "forbidden", (method, path)
    for path in READS[:-1]:
        assert client.get(path, headers=reader).status_code == 200, path
    health = client.get("/api/health", headers=reader)  # critical: s has no live worker
    assert health.status_code == 503 and health.json()["status"] == "critical"
    # Nothing was changed.
    assert scalar(database, "SELECT count(*) FROM services") == 1
    assert scalar(database, "SELECT frozen FROM services") in (False, 0)


# -- services -------------------------------------------------------------------------------
def test_services_are_added_listed_and_read(
    database: Engine, client: httpx.Client, admin: dict[str, str], reader: dict[str, str]
) -> None:
    created = client.post(
        "/api/services",
        headers=admin,
        json={"name": " store ", "provider": "sandbox", "interval": 31, "daily_quota": 5000},
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "id": 1,
        "name": "store",
        "provider": "sandbox",
        "interval": 31.0,
        "daily_quota": 5000,
        "quota_used_today": 0,
        "enabled": True,
        "frozen": False,
        "frozen_reason": None,
        "frozen_at": None,
        "frozen_until": None,
        "last_error": None,
        "workers_alive": 0,
        "options": {},
    }
    assert client.post("/api/services", headers=admin, json=ENGAGELAB).status_code == 201
    listed = client.get("/api/services", headers=reader).json()
    assert [(s["name"], s["provider"]) for s in listed] == [
        ("store", "sandbox"),
        ("el", "engagelab"),
    ]
    assert client.get("/api/services/el", headers=reader).json() == listed[1]
    assert listed[1]["options"] == {"api_user": "edm", "api_key": "***", "webhook_key": "***"}


def test_a_service_is_changed_frozen_unfrozen_disabled_and_enabled(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    services_mod.add_service(database, "s", "sandbox", 10.0)
    changed = client.patch(
        "/api/services/s", headers=admin, json={"interval": 0.5, "daily_quota": 7}
    ).json()
    assert (changed["interval"], changed["daily_quota"]) == (0.5, 7)
    assert client.patch("/api/services/s", headers=admin, json={}).json() == changed

    before = time.time()
    frozen = client.post(
        "/api/services/s/freeze", headers=admin, json={"reason": "bounces", "for_seconds": 600}
    ).json()
    assert frozen["frozen"] and frozen["frozen_reason"] == "bounces"
    until = scalar(database, "SELECT frozen_until FROM services WHERE name = 's'")
    assert before + 600 <= until <= time.time() + 600 and frozen["frozen_until"] == until
    assert before <= frozen["frozen_at"] <= time.time()
    forever = client.post("/api/services/s/freeze", headers=admin).json()  # no body at all
    assert forever["frozen_reason"] == "frozen by an operator" and forever["frozen_until"] is None

    unfrozen = client.post("/api/services/s/unfreeze", headers=admin).json()
    assert not unfrozen["frozen"]
    assert unfrozen["frozen_at"] is None and unfrozen["frozen_until"] is None
    assert client.post("/api/services/s/disable", headers=admin).json()["enabled"] is False
    assert scalar(database, "SELECT enabled FROM services") in (False, 0)
    assert client.post("/api/services/s/enable", headers=admin).json()["enabled"] is True


def test_secrets_are_never_returned_and_kept_by_stars(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    answers = [client.post("/api/services", headers=admin, json=ENGAGELAB)]
    kept = client.patch(
        "/api/services/el",
        headers=admin,
        json={"options": {"api_key": "***", "webhook_key": "***", "from": "news@example.com"}},
    )
    answers.append(kept)
    assert stored_options(database, "el") == {**ENGAGELAB["options"], "from": "news@example.com"}
    answers += [
        client.get("/api/services", headers=admin),
        client.get("/api/services/el", headers=admin),
        client.post("/api/services/el/freeze", headers=admin, json={"for_seconds": 60}),
        client.post("/api/services/el/unfreeze", headers=admin),
        client.post("/api/services/el/disable", headers=admin),
        client.post("/api/services/el/enable", headers=admin),
    ]
    for answer in answers:
        assert answer.status_code in (200, 201), answer.text
        assert API_KEY not in answer.text and WEBHOOK_KEY not in answer.text
    assert kept.json()["options"] == {
        "api_user": "edm",
        "api_key": "***",
        "webhook_key": "***",
        "from": "news@example.com",
    }
    # A new value replaces the secret; `***` for a secret never stored is refused.
    client.patch("/api/services/el", headers=admin, json={"options": {"api_key": "new-key"}})
    assert stored_options(database, "el")["api_key"] == "new-key"
    refused = client.patch("/api/services/el", headers=admin, json={"options": {"token": "***"}})
    assert error(refused, 400)["field"] == "options.token"
    stars = {**ENGAGELAB, "name": "el2", "options": {"api_user": "u", "api_key": "***"}}
    refused = client.post("/api/services", headers=admin, json=stars)
    assert error(refused, 400)["field"] == "options.api_key"


def test_bad_service_input_is_a_4xx_naming_the_field(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    sandbox = {"name": "new", "provider": "sandbox", "interval": 1}
    for body, field in [
        ({**sandbox, "interval": -1}, "interval"),
        ({**sandbox, "interval": 86_401}, "interval"),
        ({**sandbox, "daily_quota": -1}, "daily_quota"),
        ({**sandbox, "daily_quota": 2**31}, "daily_quota"),
        ({**sandbox, "provider": "carrier-pigeon"}, "provider"),
        ({**sandbox, "name": "bad\x07name"}, "name"),
        ({**sandbox, "name": "   "}, "name"),
        ({**sandbox, "name": "x" * 201}, "name"),
        ({**sandbox, "name": "news/eu"}, "name"),  # not addressable in a path
        ({**sandbox, "name": ".."}, "name"),
        ({**sandbox, "options": {"colour": "blue"}}, "options"),
        ({**sandbox, "options": {"outbox": "/proc/edm/outbox.jsonl"}}, "options.outbox"),
        ({**sandbox, "options": {"latency": "\x00"}}, "options"),
        ({**sandbox, "surprise": 1}, "surprise"),
        ({"provider": "sandbox", "interval": 1}, "name"),
        ({**ENGAGELAB, "options": {"api_user": "edm"}}, "options"),
    ]:
        answer = client.post("/api/services", headers=admin, json=body)
        assert error(answer, 400)["field"] == field, body
    nan = client.post(
        "/api/services",
        headers={**admin, "Content-Type": "application/json"},
        content=b'{"name": "n", "provider": "sandbox", "interval": NaN}',
    )
    assert error(nan, 400)["field"] == "interval"
    duplicate = client.post("/api/services", headers=admin, json={**sandbox, "name": "s"})
    assert error(duplicate, 409)["field"] == "name"

    for body, field in [
        ({"interval": "fast"}, "interval"),
        ({"daily_quota": 1.5}, "daily_quota"),
        ({"daily_quota": True}, "daily_quota"),
        ({"interval": False}, "interval"),
        ({"interval": "9"}, "interval"),
        ({"daily_quota": "9"}, "daily_quota"),
        ({"options": {"fail_service": "2"}}, "options"),
        ({"options": {"": "x"}}, "options"),
        ({"quota": 1}, "quota"),
    ]:
        answer = client.patch("/api/services/s", headers=admin, json=body)
        assert error(answer, 400)["field"] == field, body
    for body, field in [({"for_seconds": 0}, "for_seconds"), ({"reason": "\x00"}, "reason")]:
        answer = client.post("/api/services/s/freeze", headers=admin, json=body)
        assert error(answer, 400)["field"] == field, body
    answer = client.post("/api/services/s/test", headers=admin, json={"to": "not an address"})
    assert error(answer, 400)["field"] == "to"
    assert stored_options(database, "s") == {}  # nothing refused was stored
    assert scalar(database, "SELECT count(*) FROM services") == 1


def test_an_unknown_service_is_404_on_every_route(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    for method, path, body in [("GET", "/api/services/nope", None)] + [
        (method, path.replace("/s", "/nope", 1), body)
        for method, path, body in WRITES
        if "/s" in path
    ]:
        answer = client.request(method, path, json=body, headers=admin)
        assert error(answer, 404)["code"] == "not_found", (method, path)


def test_a_test_message_goes_through_the_service(
    database: Engine, client: httpx.Client, admin: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    services_mod.add_service(database, "box", "sandbox", 0.0, options={"outbox": str(outbox)})
    answer = client.post("/api/services/box/test", headers=admin, json={"to": "Me@Example.com"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["accepted"] and not result["duplicate"] and result["error_class"] is None
    [line] = read_outbox(outbox)
    assert line["to"] == "Me@Example.com" and line["service"] == "box"
    assert line["subject"] == "edm test message from service box"
    assert line["message_id"] == result["provider_message_id"]

    # A provider's refusal is its answer, not a failure of the request.
    services_mod.add_service(database, "broken", "sandbox", 0.0, options={"fail_service": "1"})
    refused = client.post("/api/services/broken/test", headers=admin, json={"to": "me@x.org"})
    assert refused.status_code == 200
    assert refused.json()["accepted"] is False and refused.json()["error_class"] == "service"


# -- events -----------------------------------------------------------------------------------
def posted(engine: Engine, body: object) -> None:
    """A webhook request logged and processed, here or by the server's processor."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request_id = log_request(engine, "generic", {"Content-Type": "application/json"}, raw)
    pipeline.process_request(engine, request_id)
    wait_for(
        lambda: (
            scalar(engine, "SELECT status FROM webhook_requests WHERE id = :i", i=request_id)
            not in ("received", "processing")
        ),
        5,
        "the request to be processed",
    )


def test_the_event_log_is_paged_newest_first(
    database: Engine, client: httpx.Client, reader: dict[str, str]
) -> None:
    sub_tasks = [sub_task for sub_task, _contact in sent_task(database, ["a@x.org", "b@x.org"])]
    for n, sub_task in enumerate(sub_tasks * 2):
        posted(database, generic_event("opened", sub_task, 1000 + n, f"o{n}"))
    posted(database, {"event": "delivered", "timestamp": 5000, "provider_message_id": "late"})
    posted(database, b"{oops")

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/events", headers=reader, params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [event["id"] for event in seen] == [5, 4, 3, 2, 1]
    assert [event["status"] for event in seen] == ["unmatched"] + ["applied"] * 4
    assert seen[1]["task_id"] == 1 and seen[1]["sub_task_id"] == sub_tasks[1]

    def listed(**params: object) -> list[tuple]:
        page = client.get("/api/events", headers=reader, params=params).json()
        return [(event["id"], event["event"], event["status"]) for event in page["items"]]

    assert listed(status="unmatched") == [(5, "delivered", "unmatched")]
    assert [event[0] for event in listed(task_id=1)] == [4, 3, 2, 1]
    assert listed(task_id=2) == []
    [(_, kind, status)] = listed(status="invalid")
    assert (kind, status) == ("request", "invalid")
    assert listed(status="invalid", task_id=1) == []  # a request that could not be read has no task
    assert listed(cursor="3") == [(2, "opened", "applied"), (1, "opened", "applied")]

    for params, field in [
        ({"status": "bogus"}, "status"),
        ({"task_id": 0}, "task_id"),
        ({"task_id": 2**53}, "task_id"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "²"}, "cursor"),
        ({"cursor": "9" * 20}, "cursor"),
    ]:
        answer = client.get("/api/events", headers=reader, params=params)
        assert error(answer, 400)["field"] == field, params


def test_events_are_reprocessed_by_status_and_by_id(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    first, second = (sub_task for sub_task, _ in sent_task(database, ["a@x.org", "b@x.org"]))
    posted(database, {"event": "delivered", "timestamp": 5000, "provider_message_id": "late1"})
    posted(database, {"event": "opened", "timestamp": 5001, "provider_message_id": "late2"})
    with database.begin() as conn:  # the sends' own commits arrive after their webhooks
        for sub_task, message_id in ((first, "late1"), (second, "late2")):
            conn.execute(
                text("UPDATE sub_tasks SET provider_message_id = :m WHERE id = :i"),
                {"m": message_id, "i": sub_task},
            )
    by_id = client.post("/api/events/reprocess", headers=admin, json={"ids": [1, 1, 10**9]})
    assert by_id.json() == {"reprocessed": 2, "statuses": {"applied": 1, "skipped": 1}}
    assert scalar(database, "SELECT delivered_at FROM sub_tasks WHERE id = :i", i=first) == 5000
    by_status = client.post("/api/events/reprocess", headers=admin, json={"status": "unmatched"})
    assert by_status.json() == {"reprocessed": 1, "statuses": {"applied": 1}}
    assert scalar(database, "SELECT open_count FROM sub_tasks WHERE id = :i", i=second) == 1
    nothing = client.post("/api/events/reprocess", headers=admin, json={"status": "error"})
    assert nothing.json() == {"reprocessed": 0, "statuses": {}}

    for body, field in [
        ({}, "ids"),
        ({"status": "applied"}, "status"),
        ({"ids": [0]}, "ids.0"),
        ({"ids": ["x"]}, "ids.0"),
        ({"ids": [2**53]}, "ids.0"),
        ({"ids": ["1"]}, "ids.0"),
        ({"ids": [True]}, "ids.0"),
        ({"ids": [1], "force": True}, "force"),
    ]:
        answer = client.post("/api/events/reprocess", headers=admin, json=body)
        assert error(answer, 400)["field"] == field, body


def test_api_health_answers_as_health(
    database: Engine, client: httpx.Client, reader: dict[str, str]
) -> None:
    def summary(answer: httpx.Response) -> tuple:
        body = answer.json()
        return (
            answer.status_code,
            body["status"],
            [(c["name"], c["status"]) for c in body["checks"]],
        )

    assert summary(client.get("/api/health", headers=reader)) == summary(client.get("/health"))
    assert summary(client.get("/api/health", headers=reader))[:2] == (200, "ok")
    services_mod.add_service(database, "s", "sandbox", 0.0)  # and no worker for it
    critical = summary(client.get("/api/health", headers=reader))
    assert critical[:2] == (503, "critical") and ("services_running", "critical") in critical[2]
    assert critical == summary(client.get("/health"))
