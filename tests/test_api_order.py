"""Order does not matter, over real HTTP: any permutation and repetition of a set of events,
posted as several concurrent requests to a running server, ends in the same sub-task and
contact state as the sorted, de-duplicated sequence posted one request at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from edm.config import Settings
from tests.api_server import api_server, emptied, sent_task
from tests.helpers import forget_events, generic_event, shuffled_requests

TOKEN = "order-token"
KINDS = ("delivered", "opened", "clicked", "hard", "soft", "complained", "unsubscribed")
FACTS = (
    "status, delivered_at, opened_at, open_count, clicked_at, click_count, bounced_at,"
    " bounce_type, complained_at, unsubscribed_at"
)


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, Settings(webhook_token=TOKEN)) as client:
        yield client


def _post(client: httpx.Client, body: object) -> None:
    answer = client.post(
        "/api/webhooks/generic", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200, answer.text


def _settled_state(engine: Engine) -> tuple:
    """The state once the server has processed every logged request."""
    deadline = time.monotonic() + 20
    with engine.connect() as conn:
        while (
            conn.execute(
                text("SELECT count(*) FROM webhook_requests WHERE status <> 'processed'")
            ).scalar()
            or conn.execute(text("SELECT count(*) FROM events WHERE status = 'received'")).scalar()
        ):
            assert time.monotonic() < deadline, "the server did not process every request"
            conn.rollback()
            time.sleep(0.02)
        subs = conn.execute(text(f"SELECT {FACTS} FROM sub_tasks ORDER BY id")).all()
        contacts = conn.execute(text("SELECT status FROM contacts ORDER BY id")).scalars()
        return [tuple(row) for row in subs], list(contacts)


def test_any_order_over_http_gives_the_same_state(client: httpx.Client, db: Engine) -> None:
    emptied(db)
    ids = [sub for sub, _ in sent_task(db, ["a@example.com", "b@example.com"])]

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        events=st.lists(
            st.tuples(st.sampled_from(KINDS), st.integers(0, 1), st.integers(1, 40)),
            min_size=1,
            max_size=12,
            unique=True,
        ),
        seed=st.integers(0, 2**32),
    )
    def check(events: list[tuple[str, int, int]], seed: int) -> None:
        bodies = [
            generic_event(kind, ids[which], 1000.0 + at, f"{kind}-{which}-{at}")
            for kind, which, at in events
        ]
        forget_events(db)
        for body in sorted(bodies, key=lambda b: (b["timestamp"], b["event_id"])):
            _post(client, body)
        expected = _settled_state(db)

        forget_events(db)
        requests = shuffled_requests(bodies, seed, most=3)
        threads = [
            threading.Thread(target=lambda mine=requests[i::3]: [_post(client, b) for b in mine])
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _settled_state(db) == expected

    check()
