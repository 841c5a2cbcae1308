"""`/api/lists`, `/api/audience/count` and the API's tokens, over a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from edm.api_tokens import create_token
from edm.config import Settings
from edm.contacts import add_contacts
from tests.api_server import api_server
from tests.helpers import edm


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, Settings()) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_decide_who_reads_and_who_writes(database: Engine, client: httpx.Client) -> None:
    admin, read = create_token(database, "ops", "admin"), create_token(database, "bi", "read")
    for headers in ({}, bearer("edm_not-a-token"), {"Authorization": f"Basic {admin}"}):
        answer = client.get("/api/lists", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/lists", headers=bearer(read)).status_code == 200
    refused = client.post("/api/lists", json={"name": "x"}, headers=bearer(read))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert client.post("/api/lists", json={"name": "x"}, headers=bearer(admin)).status_code == 201

    code, out, _ = edm("token", "revoke", "bi")
    assert code == 0
    assert client.get("/api/lists", headers=bearer(read)).status_code == 401
    code, out, _ = edm("token", "list", "--json")
    shown = {row["name"]: row for row in json.loads(out)}
    assert shown["bi"]["revoked_at"] and shown["ops"]["last_used_at"]
    assert read not in out and admin not in out  # only hashes are kept


def test_the_token_commands(database: Engine) -> None:
    code, out, err = edm("token", "create", "deploy", "--role", "admin")
    assert code == 0 and out.strip().startswith("edm_") and "cannot be shown again" in err
    code, _, err = edm("token", "create", "deploy")
    assert code == 1 and "exists" in err
    code, _, err = edm("token", "create", "x", "--role", "root")
    assert code == 1 and "--role must be one of admin, read" in err
    code, _, err = edm("token", "revoke", "nobody")
    assert code == 1 and "no token named 'nobody'" in err


def test_lists_and_audience_counts(database: Engine, client: httpx.Client) -> None:
    admin = bearer(create_token(database, "ops", "admin"))
    add_contacts(
        database,
        [
            {"email": "a@example.com", "fields": {"city": "Paris"}},
            {"email": "b@example.com", "fields": {"city": "Lyon"}},
            {"email": "c@example.com", "fields": {"city": "Paris"}, "status": "bounced"},
        ],
    )
    made = client.post("/api/lists", json={"name": "all", "description": "d"}, headers=admin)
    assert made.status_code == 201 and made.json()["members"] == 0
    again = client.post("/api/lists", json={"name": "all"}, headers=admin)
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    blank = client.post("/api/lists", json={"name": ""}, headers=admin)
    assert blank.status_code == 400 and blank.json()["error"]["field"] == "name"

    counted = client.get(
        "/api/audience/count", params={"where": 'city = "Paris"'}, headers=admin
    ).json()
    assert counted == {"receive": 1, "suppressed": 1, "where": 'city = "Paris"'}
    assert client.get("/api/audience/count", params={"lists": "all"}, headers=admin).json() == {
        "receive": 0,
        "suppressed": 0,
        "where": None,
    }
    bad = client.get("/api/audience/count", params={"where": "city ="}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "where"
    assert "^" in bad.json()["error"]["message"]
    unknown = client.get("/api/audience/count", params={"lists": "nope"}, headers=admin)
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "lists"
    nul = client.get("/api/audience/count", params={"exclude": "a\x00b"}, headers=admin)
    assert nul.status_code == 400 and nul.json()["error"]["field"] == "exclude"  # not a 503

    assert client.delete("/api/lists/all", headers=admin).status_code == 204
    gone = client.delete("/api/lists/all", headers=admin)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
