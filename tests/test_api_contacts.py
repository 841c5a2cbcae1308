"""`/api/contacts`: search, CRUD, import by upload and export, over a real server."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from edm.api_tokens import create_token
from edm.config import Settings
from tests.api_server import api_server
from tests.helpers import scalar

FILE = (
    "email,name,city\nann@example.com,Ann,Paris\nnot-an-address,X,Rome\nbob@example.com,Bob,Lyon\n"
)


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, Settings()) as client:
        yield client


@pytest.fixture
def admin(database: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(database, 'ops', 'admin')}"}


def upload(
    client: httpx.Client, headers: dict[str, str], body: str, **params: str
) -> httpx.Response:
    return client.post(
        "/api/contacts/import",
        content=body.encode(),
        params=params,
        headers={**headers, "Content-Type": "text/csv"},
    )


def test_an_upload_imports_good_rows_and_lists_the_bad_ones(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    answer = upload(client, admin, FILE, list="spring")
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["rows"], summary["new"], summary["rejected"]) == (3, 2, 1)
    assert summary["rejections"][0]["line"] == 3 and summary["list_made"] is True
    broken = upload(client, admin, 'email\n"unterminated\n')
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_file"
    assert "nothing imported" in broken.json()["error"]["message"]

    page = client.get("/api/contacts", params={"list": "spring"}, headers=admin).json()
    assert [c["email"] for c in page["items"]] == ["ann@example.com", "bob@example.com"]

    # Latin-1 bytes read as UTF-8: the answer says how to name the encoding here.
    latin = "email,name\nzoe@example.com,Zoé\n".encode("latin-1")
    wrong = client.post(
        "/api/contacts/import",
        content=latin,
        headers={**admin, "Content-Type": "text/csv"},
    )
    error = wrong.json()["error"]
    assert wrong.status_code == 400 and error["field"] == "encoding"
    assert "`encoding` parameter" in error["message"] and "--encoding" not in error["message"]
    right = client.post(
        "/api/contacts/import",
        content=latin,
        params={"encoding": "latin-1"},
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert right.status_code == 200 and right.json()["new"] == 1
    for codec in ("zlib", "rot13", "punycode", "a\x00b", "no-such-codec"):
        refused = client.post(
            "/api/contacts/import",
            content=latin,
            params={"encoding": codec},
            headers={**admin, "Content-Type": "text/csv"},
        )
        assert refused.status_code == 400, (codec, refused.text)
        assert refused.json()["error"]["field"] == "encoding"
    assert client.get("/api/contacts/zoe@example.com", headers=admin).json()["name"] == "Zoé"
    bad_json = client.post(
        "/api/contacts",
        content=b'{"email": ',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["field"] == "body"
    assert "not JSON" in bad_json.json()["error"]["message"]


def test_contacts_are_added_changed_found_and_deleted(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    client.post("/api/lists", json={"name": "vip"}, headers=admin)
    made = client.post(
        "/api/contacts",
        json={
            "email": "Ann@Example.com",
            "name": "Ann",
            "fields": {"city": "Paris"},
            "lists": ["vip"],
        },
        headers=admin,
    )
    assert made.status_code == 201, made.text
    assert (made.json()["email"], made.json()["lists"]) == ("ann@example.com", ["vip"])
    taken = client.post("/api/contacts", json={"email": "ann@example.com"}, headers=admin)
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "email"
    bad = client.post("/api/contacts", json={"email": "nobody"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "email"
    no_list = client.post(
        "/api/contacts", json={"email": "b@example.com", "lists": ["x"]}, headers=admin
    )
    assert no_list.status_code == 400 and no_list.json()["error"]["field"] == "lists"

    changed = client.patch(
        "/api/contacts/ann@example.com",
        json={"set_fields": {"plan": "pro"}, "unset_fields": ["city"], "remove_lists": ["vip"]},
        headers=admin,
    )
    assert changed.status_code == 200
    assert (changed.json()["fields"], changed.json()["lists"]) == ({"plan": "pro"}, [])
    assert client.get("/api/contacts/nobody@example.com", headers=admin).status_code == 404

    with database.begin() as conn:  # a contact whose message is being sent right now
        conn.execute(
            text(
                "INSERT INTO tasks (name, subject, status, created_at, delivery_policy, priority)"
                " VALUES ('t', 's', 'running', 0, 'at_most_once', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sub_tasks (task_id, contact_id, status, idempotency_key, attempts,"
                " next_attempt_at, open_count, click_count)"
                " SELECT 1, id, 'sending', 'k', 1, 0, 0, 0 FROM contacts"
            )
        )
    busy = client.delete("/api/contacts/ann@example.com", headers=admin)
    assert busy.status_code == 409 and "being sent right now" in busy.json()["error"]["message"]
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET status = 'sent'"))
    assert client.delete("/api/contacts/ann@example.com", headers=admin).status_code == 204
    assert scalar(database, "SELECT count(*) FROM contacts") == 0


def test_search_pages_and_export(
    database: Engine, client: httpx.Client, admin: dict[str, str]
) -> None:
    rows = "".join(f"u{i:02d}@example.com,User_{i}\n" for i in range(12))
    upload(client, admin, "email,name\n" + rows + "odd%@example.com,Per%cent\n")
    seen, cursor = [], None
    while True:
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/contacts", params=params, headers=admin).json()
        seen += [c["email"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 13
    found = client.get("/api/contacts", params={"search": "%"}, headers=admin).json()["items"]
    assert [c["email"] for c in found] == ["odd%@example.com"]  # % is a character, not a wildcard
    assert client.get("/api/contacts", params={"cursor": "x"}, headers=admin).status_code == 400
    assert client.get("/api/contacts", params={"status": "gone"}, headers=admin).status_code == 400

    exported = client.get("/api/contacts/export", headers=admin)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(parsed) == 13 and parsed[0]["email"] == "u00@example.com"
    again = upload(client, admin, exported.text)  # the export imports back as it was
    assert (again.json()["unchanged"], again.json()["rejected"]) == (13, 0)
