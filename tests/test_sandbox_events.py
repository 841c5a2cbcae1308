"""The sandbox's simulated tracking events: options, draws, and real posts to a webhook."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.db import secrets as db_secrets
from edm.events.parsers.generic import GenericParser
from edm.providers import sandbox_events
from edm.providers.base import OutgoingMessage, SendResult
from edm.providers.sandbox import SandboxProvider
from edm.providers.sandbox_events import draw, parse_rates, plan
from edm.services import ServiceInputError
from tests.helpers import Worker, child_env, make_contacts, status_counts

SEED = 20240611
TOKEN = "sandbox-test-token"


class Recorder:
    """A loopback HTTP server that keeps every request and answers from a script."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with recorder.lock:
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                    recorder.requests.append(
                        {
                            "path": self.path,
                            "authorization": self.headers.get("Authorization"),
                            "body": json.loads(body),
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted_events(self) -> list[dict[str, Any]]:
        """Every event of every request answered 2xx, list bodies flattened."""
        events: list[dict[str, Any]] = []
        for request in self.requests:
            if request["status"] < 300:
                body = request["body"]
                events.extend(body if isinstance(body, list) else [body])
        return events

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def _message(sub_task_id: int) -> OutgoingMessage:
    return OutgoingMessage(
        sub_task_id=sub_task_id,
        task_id=7,
        idempotency_key=f"key-{sub_task_id}",
        to_email=f"user{sub_task_id}@example.com",
        to_name=None,
        from_addr="News <news@example.com>",
        subject="Hi",
        html=None,
        text="x",
        headers={"Message-ID": f"<key-{sub_task_id}@example.com>"},
    )


def _send_all(options: dict[str, str], ids: list[int]) -> list[SendResult]:
    """Send through a sandbox and close it, which lets its pending posts finish."""

    async def go() -> list[SendResult]:
        provider = SandboxProvider("sandbox", options)
        assert provider.wants_webhook
        provider.set_webhook("http://127.0.0.1:9/not-used", TOKEN)
        try:
            return [await provider.send(_message(i)) for i in ids]
        finally:
            await provider.close()

    return asyncio.run(go())


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"events": ""}, "at least one rate"),
        ({"events": "open"}, "must be NAME=RATE"),
        ({"events": "opened=0.4"}, "unknown event 'opened'"),
        ({"events": "open=lots"}, "open must be a number from 0 to 1, not 'lots'"),
        ({"events": "open=1.5"}, "open must be a number from 0 to 1"),
        ({"events": "open=-0.1"}, "open must be a number from 0 to 1"),
        ({"events": "click=nan"}, "click must be a number from 0 to 1"),
        ({"events": "open=0.1,open=0.2"}, "open is given twice"),
        ({"events": "delivered=0.9,hard_bounce=0.2"}, "must not exceed 1"),
        ({"events": "delivered=1", "webhook_url": "ftp://example.com/"}, "http(s) URL"),
        ({"events": "delivered=1", "webhook_url": "not a url"}, "http(s) URL"),
        ({"webhook_url": "http://example.com/hook"}, "needs option events"),
    ],
)
def test_bad_event_options_are_refused_at_service_add(
    engine: Engine, options: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ServiceInputError, match="events|webhook_url") as error:
        services_mod.add_service(engine, "s", "sandbox", 0.0, options=options)
    assert complaint in str(error.value)


@pytest.mark.parametrize(
    "options",
    [
        {
            "events": "delivered=0.95,open=0.4,click=0.1,hard_bounce=0.02,soft_bounce=0.02,"
            "complaint=0.005,unsubscribe=0.01"
        },
        {"events": " delivered = 1 , open=0 ,", "webhook_url": "https://hooks.example.com/x"},
        {"events": "hard_bounce=1"},
    ],
)
def test_good_event_options_are_accepted(engine: Engine, options: dict[str, str]) -> None:
    assert services_mod.add_service(engine, "s", "sandbox", 0.0, options=options)


def test_without_events_the_sandbox_wants_no_webhook() -> None:
    assert not SandboxProvider("s", {}).wants_webhook


# -- drawing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ("delivered=1", ["delivered"]),
        ("delivered=1,open=1", ["delivered", "open"]),
        ("delivered=1,click=1", ["delivered", "open", "click"]),  # a click implies an open
        ("open=1,complaint=1,unsubscribe=1", ["delivered", "open", "complaint", "unsubscribe"]),
        ("hard_bounce=1,open=1,complaint=1", ["hard_bounce"]),
        ("soft_bounce=1,open=1", ["soft_bounce"]),
        ("delivered=0,open=1", []),
    ],
)
def test_certain_rates_draw_exactly_their_events(events: str, expected: list[str]) -> None:
    rng = random.Random(SEED)
    rates = parse_rates(events)
    assert all(draw(rates, rng) == expected for _ in range(200))


def test_fractional_rates_are_met_over_many_draws() -> None:
    rates = parse_rates(
        "delivered=0.9,open=0.4,click=0.1,hard_bounce=0.03,soft_bounce=0.05,"
        "complaint=0.02,unsubscribe=0.05"
    )
    rng = random.Random(SEED)
    draws = [draw(rates, rng) for _ in range(20_000)]
    print("seed", SEED)
    fates = Counter(d[0] if d else "none" for d in draws)
    assert fates["delivered"] / 20_000 == pytest.approx(0.9, abs=0.015)
    assert fates["hard_bounce"] / 20_000 == pytest.approx(0.03, abs=0.008)
    assert fates["soft_bounce"] / 20_000 == pytest.approx(0.05, abs=0.008)
    assert fates["none"] / 20_000 == pytest.approx(0.02, abs=0.008)
    delivered = [d for d in draws if d and d[0] == "delivered"]
    for name, rate in [("open", 0.4), ("click", 0.1), ("complaint", 0.02), ("unsubscribe", 0.05)]:
        share = sum(name in d for d in delivered) / len(delivered)
        assert share == pytest.approx(rate, abs=0.02), name
    assert all("open" in d for d in delivered if "click" in d)


def test_a_seed_repeats_the_draws_and_the_requests() -> None:
    rates = parse_rates("delivered=0.7,open=0.5,click=0.2,hard_bounce=0.1")

    def run(seed: int) -> list:
        rng = random.Random(seed)
        out = []
        for i in range(50):
            events = [{"event": name, "n": i} for name in draw(rates, rng)]
            out.append(plan(events, rng))
        return out

    assert run(SEED) == run(SEED)
    assert run(SEED) != run(SEED + 1)


# -- posting --------------------------------------------------------------------------------


def test_events_are_posted_in_the_generic_format_with_the_token(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every post must land before close() gives up on the rest, even on a loaded machine.
    monkeypatch.setattr(sandbox_events, "CLOSE_GRACE", 30.0)
    ids = list(range(1, 61))
    results = _send_all(
        {"events": "delivered=1,open=1", "webhook_url": recorder.url + "/hook", "seed": "3"}, ids
    )

    assert all(r.provider_message_id and not r.duplicate for r in results)
    assert {r["authorization"] for r in recorder.requests} == {f"Bearer {TOKEN}"}
    assert {r["path"] for r in recorder.requests} == {"/hook"}
    parser = GenericParser()
    parsed = [event for r in recorder.requests for event in parser.parse(r["body"])]
    by_sub_task = {i: {e.event for e in parsed if e.sub_task_id == i} for i in ids}
    assert by_sub_task == {i: {"delivered", "opened"} for i in ids}
    assert {e.message_id for e in parsed} == {f"<key-{i}@example.com>" for i in ids}
    # Like a real provider: some events twice (same id, so de-duplicated), some requests
    # carrying several events.
    assert len({e.dedupe_key for e in parsed}) == 2 * len(ids) < len(parsed)
    assert any(isinstance(r["body"], list) for r in recorder.requests)
    assert any(isinstance(r["body"], dict) for r in recorder.requests)


def test_bounces_are_posted_as_bounce_with_their_type(recorder: Recorder) -> None:
    _send_all({"events": "hard_bounce=1", "webhook_url": recorder.url}, [1, 2, 3])
    events = recorder.accepted_events()
    assert {e["event"] for e in events} == {"bounce"}
    assert {e["data"]["bounce_type"] for e in events} == {"hard"}
    parsed = GenericParser().parse(events)
    assert {e.event for e in parsed} == {"hard_bounce"}


def test_a_repeated_key_posts_no_new_events(recorder: Recorder) -> None:
    results = _send_all({"events": "delivered=1", "webhook_url": recorder.url}, [5, 5, 5])
    assert [r.duplicate for r in results] == [False, True, True]
    assert {e["event_id"] for e in recorder.accepted_events()} == {
        f"{results[0].provider_message_id}:delivered"
    }


def test_a_failing_endpoint_is_retried() -> None:
    server = Recorder(statuses=[500, 500])
    try:
        _send_all({"events": "delivered=1", "webhook_url": server.url, "seed": "1"}, [9])
    finally:
        server.close()
    # The seed draws one request: the same body answered 500, 500, then 200.
    assert [r["status"] for r in server.requests] == [500, 500, 200]
    assert len({json.dumps(r["body"]) for r in server.requests}) == 1
    assert {e["subtask_id"] for e in server.accepted_events()} == {9}


def test_an_unreachable_endpoint_is_logged_and_sending_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox_events, "RETRY_DELAYS", (0.01, 0.01))
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def go() -> tuple[list[SendResult], float]:
        provider = SandboxProvider(
            "s", {"events": "delivered=1", "webhook_url": f"http://127.0.0.1:{port}/"}
        )
        provider.set_webhook("http://unused", TOKEN)
        started = time.monotonic()
        results = [await provider.send(_message(i)) for i in (1, 2)]
        took = time.monotonic() - started
        await provider.close()
        return results, took

    with caplog.at_level(logging.WARNING, logger="edm.providers.sandbox_events"):
        results, took = asyncio.run(go())
    assert all(r.provider_message_id for r in results)
    assert took < 0.2, "posting must not hold up a send"
    dropped = [r for r in caplog.records if getattr(r, "action", None) == "sandbox_event_dropped"]
    assert {r.sub_task_id for r in dropped} == {1, 2}
    assert all(r.levelno == logging.WARNING for r in dropped)


@pytest.mark.skipif(
    not hasattr(db_secrets, "webhook_token"), reason="edm.db.secrets.webhook_token not there yet"
)
def test_a_worker_posts_to_the_installation_endpoint(
    engine: Engine, env: dict[str, str], tmp_path: Path, recorder: Recorder
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.0, options={"events": "delivered=1"})
    make_contacts(engine, 5)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)

    worker = Worker(child_env(env, EDM_PUBLIC_URL=recorder.url + "/"), tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr

    assert status_counts(engine, task_id) == {"sent": 5}
    assert {r["path"] for r in recorder.requests} == {"/api/webhooks/generic"}
    token = db_secrets.webhook_token(engine)
    assert {r["authorization"] for r in recorder.requests} == {f"Bearer {token}"}
    assert len({e["subtask_id"] for e in recorder.accepted_events()}) == 5
