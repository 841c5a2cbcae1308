"""Unsubscribe links over real HTTP: GET only shows a page, POST (the page's button or a
mail client's RFC 8058 one-click) unsubscribes once, and a link that is not genuine
changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import tasks as tasks_mod
from edm.config import Settings
from edm.db.secrets import signing_key
from edm.messages import unsubscribe_token
from tests.api_server import api_server, sent_task
from tests.helpers import scalar

# An address whose every shown character needs escaping.
ODD = "&b<c>'d\"@example.com"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, Settings(secret_key="")) as client:
        yield client


def link(engine: Engine, sub_task_id: int, contact_id: int) -> str:
    return "/unsubscribe/" + unsubscribe_token(signing_key(engine, ""), sub_task_id, contact_id)


def state(engine: Engine) -> tuple:
    with engine.connect() as conn:
        contacts = conn.execute(text("SELECT email, status FROM contacts ORDER BY id")).all()
        subs = conn.execute(text("SELECT id, unsubscribed_at FROM sub_tasks ORDER BY id")).all()
        events = conn.execute(text("SELECT event, status, duplicates FROM events")).all()
    return [tuple(r) for r in contacts], [tuple(r) for r in subs], [tuple(r) for r in events]


def test_get_shows_a_page_and_post_unsubscribes_once(
    client: httpx.Client, database: Engine
) -> None:
    (odd_sub, odd_contact), (other_sub, _) = sent_task(database, [ODD, "other@example.com"])
    url = link(database, odd_sub, odd_contact)
    before = state(database)

    page = client.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&amp;…&#34;@example.com" in page.text or "&amp;…&quot;@example.com" in page.text
    assert "<c>" not in page.text and 'method="post"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert state(database) == before  # a scanner following the link changes nothing

    done = client.post(url, data=ONE_CLICK)
    assert done.status_code == 200 and "unsubscribed" in done.text
    contacts, subs, events = state(database)
    assert contacts == [(ODD.lower(), "unsubscribed"), ("other@example.com", "active")]
    assert dict(subs)[odd_sub] is not None and dict(subs)[other_sub] is None
    assert events == [("unsubscribed", "applied", 0)]
    unsubscribed_at = dict(subs)[odd_sub]

    again = client.post(url, data=ONE_CLICK)
    assert again.status_code == 200
    contacts, subs, events = state(database)
    assert dict(subs)[odd_sub] == unsubscribed_at
    assert events == [("unsubscribed", "applied", 1)]
    assert "already unsubscribed" in client.get(url).text

    # The next task skips the contact.
    task_id = tasks_mod.create_task(database, "next", "s", text_body="x", start=True)
    skipped = scalar(
        database,
        "SELECT status FROM sub_tasks WHERE task_id = :t AND contact_id = :c",
        t=task_id,
        c=odd_contact,
    )
    assert skipped == "skipped"


def test_a_link_that_is_not_genuine_changes_nothing(client: httpx.Client, database: Engine) -> None:
    (sub, contact), (other_sub, other_contact) = sent_task(
        database, ["a@example.com", "b@example.com"]
    )
    genuine = link(database, sub, contact)
    token = genuine.rsplit("/", 1)[1]
    ids, mac = token.rsplit(".", 1)
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    forged = [
        f"{ids}.{flipped}",  # altered signature
        f"{other_sub}.{contact}.{mac}",  # another sub-task, same signature
        token[:-3],  # truncated
        f"{ids}.",
        ids,
        "garbage",
        "1.1." + "A" * 5000,
        "١.١." + mac,  # non-ASCII digits
        unsubscribe_token("another key", sub, contact),
        link(database, sub, other_contact).rsplit("/", 1)[1],  # genuine key, wrong contact
        link(database, 999_999, contact).rsplit("/", 1)[1],  # no such sub-task
    ]
    before = state(database)
    for bad in forged:
        for answer in (
            client.get(f"/unsubscribe/{bad}"),
            client.post(f"/unsubscribe/{bad}", data=ONE_CLICK),
        ):
            assert answer.status_code == 400, (bad, answer.status_code, answer.text[:200])
            assert "not valid" in answer.text
    assert state(database) == before
    assert client.post(genuine, data=ONE_CLICK).status_code == 200
