"""`/api/tasks` over a real server, on both databases: who may do what, bad input answered
with the one error shape, and a campaign from create to resend through the API alone."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import task_actions
from edm import tasks as tasks_mod
from edm.api_tokens import create_token, revoke_token
from edm.audience import lists as lists_mod
from edm.config import Settings
from edm.contacts import add_contacts
from tests.api_server import api_server
from tests.helpers import (
    FAST_ENV,
    Worker,
    child_env,
    generic_event,
    read_outbox,
    scalar,
    wait_for,
)

PUBLIC_URL = "https://edm.example"
WEBHOOK_TOKEN = "tasks-webhook-token"
SETTINGS = Settings(public_url=PUBLIC_URL, webhook_token=WEBHOOK_TOKEN)


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, SETTINGS) as client:
        yield client


@pytest.fixture
def admin(database: Engine) -> dict[str, str]:
    return bearer(create_token(database, "ops", "admin"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(answer: httpx.Response, status: int, field: str | None = None) -> dict:
    """The error of an answer, checked to be `status` in the one shape, naming `field`."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "field"} and error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


def draft(engine: Engine, count: int = 3, **options: object) -> int:
    """A draft task to `count` new contacts (and a sandbox service when there is none)."""
    if not scalar(engine, "SELECT count(*) FROM services"):
        services_mod.add_service(engine, "s", "sandbox", 0.0)
    add_contacts(engine, [{"email": f"c{i}@example.com", "name": f"C{i}"} for i in range(count)])
    return tasks_mod.create_task(engine, "t", "Hi {{ name }}", text_body="x", **options)


# -- who may do what -------------------------------------------------------------------------------
READS = ("/api/tasks", "/api/tasks/1", "/api/tasks/1/preview", "/api/tasks/1/sub-tasks")
WRITES = (
    ("/api/tasks", {"name": "n", "subject": "s", "text": "x"}),
    ("/api/tasks/1/start", None),
    ("/api/tasks/1/pause", None),
    ("/api/tasks/1/resume", None),
    ("/api/tasks/1/cancel", None),
    ("/api/tasks/1/test-send", {"to": "ops@example.com"}),
    ("/api/tasks/1/resend", {"statuses": ["failed"]}),
)


def test_tokens_decide_who_reads_and_who_writes(database: Engine, client: httpx.Client) -> None:
    draft(database)
    read = create_token(database, "bi", "read")
    gone = create_token(database, "old", "admin")
    revoke_token(database, "old")
    for headers in ({}, bearer("edm_not-a-token"), bearer(gone), {"Authorization": "Basic x"}):
        for path in (*READS, "/api/tasks/1/export"):
            refused(client.get(path, headers=headers), 401)
        for path, body in WRITES:
            refused(client.post(path, json=body, headers=headers), 401)
    for path in READS:
        assert client.get(path, headers=bearer(read)).status_code == 200, path
    exported = client.get("/api/tasks/1/export", headers=bearer(read))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    for path, body in WRITES:
        assert refused(client.post(path, json=body, headers=bearer(read)), 403)["code"] == (
            "forbidden"
        )
    assert tasks_mod.show_task(database, 1).status == "draft"  # nothing was changed


# -- bad input -------------------------------------------------------------------------------------
def test_unknown_and_impossible_task_ids(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    for path in ("/api/tasks/7", "/api/tasks/7/preview", "/api/tasks/7/sub-tasks"):
        assert refused(client.get(path, headers=admin), 404)["code"] == "not_found"
    refused(client.get("/api/tasks/7/export", headers=admin), 404)
    for path, body in WRITES[1:]:
        refused(client.post(path.replace("/1/", "/7/"), json=body, headers=admin), 404)
    for bad in ("0", "-1", "9223372036854775808", "99999999999999999999999999", "abc", "1.5"):
        refused(client.get(f"/api/tasks/{bad}", headers=admin), 400, "task_id")
        refused(client.post(f"/api/tasks/{bad}/start", headers=admin), 400, "task_id")
    refused(client.get("/api/tasks/9223372036854775807", headers=admin), 404)


def test_bad_task_bodies_name_the_field(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    add_contacts(database, [{"email": "a@example.com", "fields": {"city": "Paris"}}])
    lists_mod.create_list(database, "empty")
    good = {"name": "n", "subject": "Hi", "text": "x"}
    cases = [
        ({"subject": "Hi", "text": "x"}, "name"),
        ({"name": "n", "text": "x"}, "subject"),
        ({**good, "name": "   "}, "name"),
        ({**good, "subject": "{{ oops"}, "subject"),
        ({**good, "html": "<p>{% if %}</p>"}, "html"),
        ({**good, "text": "Hello {{ nickname }}"}, "text"),
        ({**good, "html": "<p>{{ 1 / 0 }}</p>"}, "html"),
        ({**good, "text": None}, "html"),
        ({**good, "text": "a\x00b"}, "text"),
        ({**good, "from": "not an address"}, "from"),
        ({**good, "services": ["nope"]}, "services"),
        ({**good, "lists": ["nope"]}, "lists"),
        ({**good, "exclude": ["nope"]}, "exclude"),
        ({**good, "lists": ["a\x00"]}, "lists"),
        ({**good, "lists": ["empty"]}, "lists"),
        ({**good, "where": "city ="}, "where"),
        ({**good, "where": 'city = "Rome"'}, "where"),
        ({**good, "priority": 2**31}, "priority"),
        ({**good, "priority": "high"}, "priority"),
        ({**good, "delivery": "twice"}, "delivery"),
        ({**good, "at": "soon"}, "at"),
        ({**good, "at": "2001-01-01T00:00Z"}, "at"),
        ({**good, "at": "2999-01-01T00:00Z", "start": True}, "start"),
        ({**good, "services": "s"}, "services"),
    ]
    for body, field in cases:
        refused(client.post("/api/tasks", json=body, headers=admin), 400, field)
    for raw in (b"{", b"[]", b"null", b'"x"'):
        headers = {**admin, "Content-Type": "application/json"}
        refused(client.post("/api/tasks", content=raw, headers=headers), 400)
    assert client.get("/api/tasks", headers=admin).json() == {"items": [], "next_cursor": None}


def test_bad_queries_and_bodies_of_a_task(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    task_id = draft(database)
    base = f"/api/tasks/{task_id}"
    for params, field in (
        ({"status": "lost"}, "status"),
        ({"cursor": "x"}, "cursor"),
        ({"cursor": "²"}, "cursor"),
        ({"cursor": "99999999999999999999"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
    ):
        refused(client.get(f"{base}/sub-tasks", params=params, headers=admin), 400, field)
    error = refused(client.get(f"{base}/export", params={"status": "lost"}, headers=admin), 400)
    assert error["field"] == "status.0"  # the first value of the list
    refused(client.get("/api/tasks", params={"cursor": "-1"}, headers=admin), 400, "cursor")
    for contact in ("nobody@example.com", "not an address", "a\x00b"):
        answer = client.get(f"{base}/preview", params={"contact": contact}, headers=admin)
        refused(answer, 400, "contact")
    for body, field in (
        ({}, "to"),
        ({"to": "not an address"}, "to"),
        ({"to": "ops@example.com", "contact": "nobody@example.com"}, "contact"),
        ({"to": "ops@example.com", "service": "nope"}, "service"),
        ({"to": "ops@example.com", "service": "a\x00"}, "service"),
    ):
        refused(client.post(f"{base}/test-send", json=body, headers=admin), 400, field)
    for body in ({"statuses": ["sent"]}, {"statuses": []}, {"statuses": "failed"}):
        error = refused(client.post(f"{base}/resend", json=body, headers=admin), 400)
        assert error["field"].startswith("statuses")


def test_the_lifecycle_refuses_what_the_state_does_not_allow(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    task_id = draft(database)
    base = f"/api/tasks/{task_id}"
    refused(client.post(f"{base}/pause", headers=admin), 409)
    refused(client.post(f"{base}/resume", headers=admin), 409)
    assert client.post(f"{base}/start", headers=admin).json()["status"] == "running"
    assert refused(client.post(f"{base}/start", headers=admin), 409)["code"] == "conflict"
    assert client.post(f"{base}/pause", headers=admin).json()["status"] == "paused"
    assert client.post(f"{base}/resume", headers=admin).json()["status"] == "running"
    cancelled = client.post(f"{base}/cancel", headers=admin).json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"] == {"cancelled": 3}
    refused(client.post(f"{base}/cancel", headers=admin), 409)
    refused(client.post(f"{base}/resend", json={}, headers=admin), 409)
    with database.begin() as conn:
        conn.execute(text("UPDATE services SET frozen = true"))
    answer = client.post(f"{base}/test-send", json={"to": "ops@example.com"}, headers=admin)
    refused(answer, 409, "service")


def test_pages_of_tasks_and_sub_tasks(
    database: Engine, client: httpx.Client, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = draft(database, 5)
    later = [
        tasks_mod.create_task(database, f"t{i}", "s", text_body="x", start=True) for i in range(2)
    ]
    page = client.get("/api/tasks", params={"limit": 2}, headers=admin).json()
    assert [t["id"] for t in page["items"]] == [first, later[0]]
    assert page["items"][0]["counts"] == {"pending": 5} and page["items"][1]["status"] == "running"
    rest = client.get(
        "/api/tasks", params={"limit": 2, "cursor": page["next_cursor"]}, headers=admin
    ).json()
    assert [t["id"] for t in rest["items"]] == [later[1]] and rest["next_cursor"] is None

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/api/tasks/{first}/sub-tasks", params=params, headers=admin).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [row["email"] for row in seen] == [f"c{i}@example.com" for i in range(5)]
    assert seen[0] == {
        "id": seen[0]["id"],
        "email": "c0@example.com",
        "status": "pending",
        "service": None,
        "attempts": 0,
        "last_error": None,
        "error_class": None,
        "sent_at": None,
        "delivered_at": None,
        "opened_at": None,
        "clicked_at": None,
        "bounced_at": None,
        "bounce_type": None,
    }
    with database.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET status = 'skipped' WHERE id = :i"), {"i": seen[1]["id"]}
        )
    only = client.get(
        f"/api/tasks/{first}/sub-tasks", params={"status": "skipped"}, headers=admin
    ).json()
    assert [row["id"] for row in only["items"]] == [seen[1]["id"]]

    # The export reads a batch at a time: every row once, in order, whatever the batch.
    monkeypatch.setattr(task_actions, "EXPORT_BATCH", 2)
    exported = client.get(f"/api/tasks/{first}/export", headers=admin)
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["email"] for row in rows] == [f"c{i}@example.com" for i in range(5)]
    assert exported.headers["content-disposition"] == f'attachment; filename="task-{first}.csv"'
    chosen = client.get(
        f"/api/tasks/{first}/export",
        params=[("status", "skipped"), ("status", "sent")],
        headers=admin,
    )
    assert [row["status"] for row in csv.DictReader(io.StringIO(chosen.text))] == ["skipped"]


def test_the_schema_describes_the_task_routes(client: httpx.Client) -> None:
    schema = client.get("/api/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/start",
        "/api/tasks/{task_id}/preview",
        "/api/tasks/{task_id}/test-send",
        "/api/tasks/{task_id}/sub-tasks",
        "/api/tasks/{task_id}/export",
        "/api/tasks/{task_id}/resend",
    ):
        for operation in paths[path].values():
            assert {"400", "401", "403", "404", "409"} <= set(operation["responses"]), path
    export = paths["/api/tasks/{task_id}/export"]["get"]["responses"]["200"]["content"]
    assert list(export) == ["text/csv"]
    task_id = paths["/api/tasks/{task_id}"]["get"]["parameters"][0]["schema"]
    assert task_id["minimum"] == 1 and task_id["maximum"] == 2**63 - 1


# -- a campaign through the API --------------------------------------------------------------------
def test_a_campaign_from_create_to_resend(
    database: Engine, client: httpx.Client, admin: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    services_mod.add_service(database, "box", "sandbox", 0.0, options={"outbox": str(outbox)})
    cities = ["Paris", "Lyon", "Paris", "Paris", "Nice"]
    add_contacts(
        database,
        [
            {"email": f"p{i}@example.com", "name": f"P{i}", "fields": {"city": city}}
            for i, city in enumerate(cities)
        ],
    )
    lists_mod.create_list(database, "fans")
    with database.begin() as conn:
        lists_mod.add_members(conn, 1, [1, 2, 3, 5])  # p3 is not a fan
    made = client.post(
        "/api/tasks",
        json={
            "name": "spring",
            "subject": "Hi {{ name }}",
            "html": '<p>{{ city }}</p><a href="{{ unsubscribe_url }}">leave</a>',
            "from": "News <news@example.com>",
            "services": ["box"],
            "lists": ["fans"],
            "where": 'city = "Paris"',
        },
        headers=admin,
    )
    assert made.status_code == 201, made.text
    task = made.json()
    task_id = task["id"]
    assert task["status"] == "draft" and task["counts"] == {"pending": 2}  # p0 and p2
    assert task["lists"] == ["fans"] and task["where"] == 'city = "Paris"'
    assert task["services"] == ["box"] and task["delivery_policy"] == "at_most_once"

    shown = client.get(f"/api/tasks/{task_id}/preview", headers=admin).json()
    first_sub_task = _sub_task_id(database, "p0@example.com")
    assert shown["contact"] == "p0@example.com" and shown["subject"] == "Hi P0"
    assert f'href="{PUBLIC_URL}/unsubscribe/{first_sub_task}.1.' in shown["html"]
    assert shown["text"].startswith("Paris")
    other = client.get(
        f"/api/tasks/{task_id}/preview", params={"contact": " P2@Example.com "}, headers=admin
    ).json()
    assert other["subject"] == "Hi P2" and other["contact"] == "p2@example.com"

    tested = client.post(
        f"/api/tasks/{task_id}/test-send",
        json={"to": "ops@example.com", "contact": "p2@example.com"},
        headers=admin,
    ).json()
    assert tested["accepted"] and tested["service"] == "box" and tested["error"] is None
    (line,) = read_outbox(outbox)
    assert line["to"] == "ops@example.com" and line["subject"] == "[test] Hi P2"
    assert line["sub_task_id"] == 0 and line["task_id"] == 0 and line["accepted"]
    assert client.get(f"/api/tasks/{task_id}", headers=admin).json()["counts"] == {"pending": 2}

    assert client.post(f"/api/tasks/{task_id}/start", headers=admin).json()["status"] == "running"
    _send_everything(database, tmp_path)
    task = client.get(f"/api/tasks/{task_id}", headers=admin).json()
    assert task["status"] == "completed" and task["counts"] == {"sent": 2}
    sent = [line for line in read_outbox(outbox) if line["task_id"] == task_id]
    assert sorted(line["to"] for line in sent) == ["p0@example.com", "p2@example.com"]
    assert {line["subject"] for line in sent} == {"Hi P0", "Hi P2"}

    # An open reported by webhook shows in the funnel and its rates.
    event = generic_event("opened", first_sub_task, time.time(), "open-1")
    answer = client.post("/api/webhooks/generic", json=event, headers=bearer(WEBHOOK_TOKEN))
    assert answer.status_code == 200, answer.text

    def funnel() -> dict:
        return client.get(f"/api/tasks/{task_id}", headers=admin).json()

    wait_for(lambda: funnel()["funnel"]["opened"] == 1, 20, "the open in the funnel")
    task = funnel()
    assert task["funnel"]["delivered"] == 1 and task["rates"]["opened"] == 0.5
    assert task["shown"] == {"opened": 1, "sent": 1}

    # One sub-task failed: listed, exported, resent with a new key, and sent again.
    other_sub_task = _sub_task_id(database, "p2@example.com")
    old_key = _key(database, other_sub_task)
    with database.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'failed', error_class = 'request',"
                " last_error = 'refused: content', sent_at = NULL WHERE id = :i"
            ),
            {"i": other_sub_task},
        )
    failed = client.get(
        f"/api/tasks/{task_id}/sub-tasks", params={"status": "failed"}, headers=admin
    ).json()["items"]
    assert [(row["email"], row["last_error"], row["service"]) for row in failed] == [
        ("p2@example.com", "refused: content", "box")
    ]
    exported = client.get(
        f"/api/tasks/{task_id}/export", params={"status": "failed"}, headers=admin
    ).text
    assert exported.splitlines()[1].startswith(f"{other_sub_task},p2@example.com,failed,box,1,")

    again = client.post(
        f"/api/tasks/{task_id}/resend", json={"statuses": ["failed"]}, headers=admin
    )
    assert again.status_code == 200, again.text
    assert again.json()["resent"] == 1 and again.json()["task"]["status"] == "running"
    assert again.json()["task"]["counts"] == {"pending": 1, "sent": 1}
    _send_everything(database, tmp_path)
    task = client.get(f"/api/tasks/{task_id}", headers=admin).json()
    assert task["status"] == "completed" and task["counts"] == {"sent": 2}
    new_key = _key(database, other_sub_task)
    assert new_key != old_key
    resent = [line for line in read_outbox(outbox) if line["sub_task_id"] == other_sub_task]
    assert [line["idempotency_key"] for line in resent] == [old_key, new_key]
    assert all(line["accepted"] and not line["duplicate"] for line in resent)
    nothing = client.post(f"/api/tasks/{task_id}/resend", json={}, headers=admin).json()
    assert nothing["resent"] == 0 and nothing["task"]["status"] == "completed"


def _send_everything(engine: Engine, tmp_path: Path) -> None:
    url = engine.url.render_as_string(hide_password=False)
    env = child_env({**os.environ, **FAST_ENV, "EDM_DATABASE_URL": url})
    assert Worker(env, tmp_path / "logs", "--exit-when-idle").wait(60) == 0


def _sub_task_id(engine: Engine, email: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT s.id FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id"
                " WHERE c.email = :e"
            ),
            {"e": email},
        ).scalar_one()


def _key(engine: Engine, sub_task_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT idempotency_key FROM sub_tasks WHERE id = :i"), {"i": sub_task_id}
        ).scalar_one()
