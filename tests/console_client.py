"""A signed-in console client over a real server, shared by the console's test modules."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.contacts import add_contacts
from tests.api_server import api_server, emptied

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def server(db: Engine) -> Iterator[httpx.Client]:
    # No cache of the health checks: the banner shows each test's own state.
    with api_server(db, Settings(health_cache_seconds=0)) as client:
        yield client


@pytest.fixture
def browser(db: Engine, server: httpx.Client) -> Iterator[httpx.Client]:
    """A client with a cookie jar of its own, on an emptied database."""
    emptied(db)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def sign_in(client: httpx.Client, token: str, next_: str = "/") -> httpx.Response:
    form = client.get("/login", params={"next": next_})
    assert form.status_code == 200
    csrf = CSRF.search(form.text)
    assert csrf
    return client.post("/login", data={"token": token, "csrf": csrf[1], "next": next_})


def cookie_header(answer: httpx.Response, name: str) -> str | None:
    return next(
        (h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{name}=")), None
    )


def running_task(engine: Engine, name: str, emails: int = 4, sent: int = 3) -> int:
    if not services_mod.list_services(engine):
        services_mod.add_service(engine, "store", "sandbox", 31.0, daily_quota=5000)
    add_contacts(
        engine, [{"email": f"{name.encode().hex()}-{i}@example.com"} for i in range(emails)]
    )
    task_id = tasks_mod.create_task(engine, name, "hello", text_body="x", start=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', sent_at = 1000.0 WHERE id IN"
                " (SELECT id FROM sub_tasks WHERE task_id = :t ORDER BY id LIMIT :n)"
            ),
            {"t": task_id, "n": sent},
        )
    return task_id
