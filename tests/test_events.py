"""The event pipeline: logged raw first, recorded once, matched in order, applied so that
order and repetition do not matter; late and failed events are not lost."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.events import pipeline
from edm.events.intake import log_request
from tests.helpers import (
    forget_events,
    funnels_kept,
    generic_event,
    make_contacts,
    scalar,
    shuffled_requests,
)

FACTS = (
    "status",
    "sent_at",
    "provider_message_id",
    "delivered_at",
    "opened_at",
    "open_count",
    "clicked_at",
    "click_count",
    "bounced_at",
    "bounce_type",
    "complained_at",
    "unsubscribed_at",
)


def _sent_task(engine: Engine, contacts: int = 3) -> list[int]:
    """A task whose sub-tasks were sent, each with a provider message id `pm-<id>`."""
    services_mod.add_service(engine, "s", "sandbox", 0.0)
    make_contacts(engine, contacts)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', service_id = 1, sent_at = 1000.0,"
                " provider_message_id = 'pm-' || id WHERE task_id = :t"
            ),
            {"t": task_id},
        )
        return list(conn.execute(text("SELECT id FROM sub_tasks ORDER BY id")).scalars())


def _post(engine: Engine, body: object, provider: str = "generic") -> pipeline.RequestOutcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request_id = log_request(engine, provider, {"Content-Type": "application/json"}, raw)
    return pipeline.process_request(engine, request_id)


def _state(engine: Engine) -> tuple:
    with engine.connect() as conn:
        subs = conn.execute(text(f"SELECT {', '.join(FACTS)} FROM sub_tasks ORDER BY id")).all()
        contacts = conn.execute(text("SELECT status FROM contacts ORDER BY id")).all()
    return [tuple(row) for row in subs], [row[0] for row in contacts]


KINDS = ("delivered", "opened", "clicked", "hard", "soft", "complained", "unsubscribed")
events_strategy = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 2), st.integers(1, 50)),
    min_size=1,
    max_size=14,
    unique_by=lambda e: (e[0], e[1], e[2]),
)


def test_any_order_and_repetition_gives_the_same_state(engine: Engine) -> None:
    ids = _sent_task(engine)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(events=events_strategy, seed=st.integers(0, 2**32))
    def check(events: list[tuple[str, int, int]], seed: int) -> None:
        bodies = [
            generic_event(kind, ids[which], 1000.0 + at, f"{kind}-{which}-{at}")
            for kind, which, at in events
        ]
        forget_events(engine)
        for body in sorted(bodies, key=lambda b: (b["timestamp"], b["event_id"])):
            _post(engine, body)
        expected = _state(engine)

        forget_events(engine)
        batches = shuffled_requests(bodies, seed, most=4)
        errors: list[BaseException] = []

        def post_all(mine: list[object]) -> None:
            try:
                for batch in mine:
                    _post(engine, batch)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=post_all, args=(batches[i::3],)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert _state(engine) == expected
        assert funnels_kept(engine)  # three appliers at once, each adding what it changed
        applied = scalar(engine, "SELECT count(*) FROM events WHERE status = 'applied'")
        assert applied == len(bodies)

    check()


def test_facts_counts_and_suppression(engine: Engine) -> None:
    first, second, _third = _sent_task(engine)
    _post(
        engine,
        [
            generic_event("opened", first, 1010, "o1"),
            generic_event("opened", first, 1005, "o2"),
            generic_event("delivered", first, 1003, "d1"),
            generic_event("soft", second, 1002, "b1"),
            generic_event("hard", second, 1004, "b2"),
            generic_event("unsubscribed", second, 1006, "u1"),
        ],
    )
    _post(engine, [generic_event("opened", first, 1010, "o1")])  # a repeat counts once
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM sub_tasks WHERE id = :i"), {"i": first}).one()
        assert (row.opened_at, row.open_count, row.delivered_at) == (1005, 2, 1003)
        bounced = conn.execute(text("SELECT * FROM sub_tasks WHERE id = :i"), {"i": second}).one()
        assert (bounced.bounced_at, bounced.bounce_type) == (1002, "hard")
    # bounced outranks unsubscribed, whichever came first
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 2") == "bounced"
    assert scalar(engine, "SELECT duplicates FROM events WHERE dedupe_key = 'id:o1'") == 1
    # The task's funnel is derived from the sub-tasks: unique counts, rates of sent.
    view = tasks_mod.show_task(engine, 1)
    assert view.funnel == {
        "delivered": 1,
        "opened": 1,
        "clicked": 0,
        "hard_bounced": 1,
        "soft_bounced": 0,
        "complained": 0,
        "unsubscribed": 1,
    }
    assert view.rates["opened"] == pytest.approx(1 / 3)
    # Each sub-task once, by its highest fact: complained > unsubscribed > bounced > clicked
    # > opened > delivered, else its status.
    assert view.shown == {"opened": 1, "unsubscribed": 1, "sent": 1}


def test_a_delivery_settles_an_unknown_outcome_as_sent(engine: Engine) -> None:
    first, *_ = _sent_task(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET status = 'unknown', sent_at = NULL WHERE id = :i"),
            {"i": first},
        )
    _post(engine, generic_event("delivered", first, 1234, "d"))
    assert scalar(engine, "SELECT status FROM sub_tasks WHERE id = :i", i=first) == "sent"
    assert scalar(engine, "SELECT sent_at FROM sub_tasks WHERE id = :i", i=first) == 1234


def _key(engine: Engine, sub_task_id: int) -> str:
    return str(scalar(engine, "SELECT idempotency_key FROM sub_tasks WHERE id = :i", i=sub_task_id))


@pytest.mark.parametrize(
    "strategy", ["sub_task_id", "provider_message_id", "message_id", "task_recipient", "recipient"]
)
def test_each_matching_strategy_matches_on_its_own(engine: Engine, strategy: str) -> None:
    ids = _sent_task(engine)
    target = ids[1]
    with engine.begin() as conn:  # the most recent send to user00001 is `target`
        conn.execute(text("UPDATE sub_tasks SET sent_at = :now"), {"now": time.time() - 60})
    identifiers = {
        "sub_task_id": {"subtask_id": target},
        "provider_message_id": {"provider_message_id": f"pm-{target}"},
        "message_id": {"message_id": f"<{_key(engine, target)}@example.com>"},
        "task_recipient": {"task_id": 1, "recipient": "USER00001@example.com"},
        "recipient": {"recipient": "user00001@example.com"},
    }[strategy]
    _post(engine, {"event": "delivered", "timestamp": 5000, **identifiers})
    with engine.connect() as conn:
        event = conn.execute(text("SELECT status, sub_task_id, matched_by FROM events")).one()
    assert tuple(event) == ("applied", target, strategy)


def test_the_order_of_strategies_wins_when_they_disagree(engine: Engine) -> None:
    first, second, third = _sent_task(engine)
    _post(
        engine,
        {
            "event": "opened",
            "timestamp": 5000,
            "subtask_id": first,
            "provider_message_id": f"pm-{second}",
            "message_id": f"<{_key(engine, third)}@example.com>",
        },
    )
    _post(
        engine,
        {
            "event": "clicked",
            "timestamp": 5000,
            "provider_message_id": f"pm-{second}",
            "message_id": f"<{_key(engine, third)}@example.com>",
        },
    )
    with engine.connect() as conn:
        matched = conn.execute(text("SELECT event, sub_task_id FROM events ORDER BY id")).all()
    assert [tuple(m) for m in matched] == [("opened", first), ("clicked", second)]


def test_a_late_event_waits_unmatched_then_applies(engine: Engine) -> None:
    first, *_ = _sent_task(engine)
    outcome = _post(engine, {"event": "delivered", "timestamp": 5000, "provider_message_id": "x9"})
    assert outcome.by_status == {"unmatched": 1}
    # The send's own commit of the provider's id arrives after its webhook.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET provider_message_id = 'x9' WHERE id = :i"), {"i": first}
        )
    report = pipeline.retry_pending(engine, unmatched_retry_seconds=3600)
    assert report.applied == 1
    assert scalar(engine, "SELECT delivered_at FROM sub_tasks WHERE id = :i", i=first) == 5000
    # Past the retry window an unmatched event is given up, and kept.
    _post(engine, {"event": "opened", "timestamp": 5000, "provider_message_id": "never"})
    report = pipeline.retry_pending(engine, unmatched_retry_seconds=0)
    assert report.given_up == 1
    assert scalar(engine, "SELECT count(*) FROM events WHERE status = 'given_up'") == 1
    # An operator's reprocess takes a given-up event back, once it can match.
    given_up = scalar(engine, "SELECT id FROM events WHERE status = 'given_up'")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET provider_message_id = 'never' WHERE id = :i"), {"i": first}
        )
    assert pipeline.reprocess(engine, [given_up, 10**9]) == {"applied": 1, "skipped": 1}
    assert scalar(engine, "SELECT open_count FROM sub_tasks WHERE id = :i", i=first) == 1


def test_unmatched_events_each_get_their_turn(engine: Engine) -> None:
    first, *_ = _sent_task(engine)
    for n in range(3):
        _post(engine, {"event": "opened", "timestamp": 10 + n, "provider_message_id": f"late{n}"})

    def retry() -> pipeline.RetryReport:
        return pipeline.retry_pending(engine, unmatched_retry_seconds=3600, limit=2)

    assert retry().applied == 0  # the two oldest tried again, in vain
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET provider_message_id = 'late2' WHERE id = :i"), {"i": first}
        )
    # More are waiting than one pass takes: the newest gets its turn on the next pass.
    assert retry().applied == 1
    assert scalar(engine, "SELECT opened_at FROM sub_tasks WHERE id = :i", i=first) == 12


def test_a_failure_while_applying_keeps_the_event_to_reprocess(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, *_ = _sent_task(engine)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "apply_facts", broken)
    outcome = _post(engine, generic_event("opened", first, 1500, "o"))
    assert outcome.by_status == {"error": 1}
    with engine.connect() as conn:
        event = conn.execute(text("SELECT id, status, error FROM events")).one()
    assert event.status == "error" and "disk on fire" in event.error
    assert scalar(engine, "SELECT open_count FROM sub_tasks WHERE id = :i", i=first) == 0

    monkeypatch.undo()
    assert pipeline.reprocess(engine, [event.id]) == {"applied": 1}
    assert scalar(engine, "SELECT open_count FROM sub_tasks WHERE id = :i", i=first) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"event": "opened"}', "timestamp"),
        (b'[{"event": "teleported", "subtask_id": 1, "timestamp": 1}]', "teleported"),
    ],
)
def test_a_body_that_cannot_be_parsed_is_kept_as_invalid(
    engine: Engine, body: bytes, message: str
) -> None:
    _sent_task(engine)
    outcome = _post(engine, body)
    assert outcome.status == "invalid" and message in (outcome.error or "")
    with engine.connect() as conn:
        logged = conn.execute(text("SELECT status, body, error FROM webhook_requests")).one()
    assert logged.status == "invalid" and logged.body == body.decode()
    assert scalar(engine, "SELECT count(*) FROM events") == 0


def test_a_request_left_unprocessed_is_picked_up(engine: Engine) -> None:
    first, *_ = _sent_task(engine)
    body = json.dumps(generic_event("delivered", first, 1500, "d")).encode()
    log_request(engine, "generic", {}, body)  # logged, then the process stopped
    report = pipeline.retry_pending(engine, unmatched_retry_seconds=3600, min_age=0)
    assert report.requests == 1
    assert scalar(engine, "SELECT delivered_at FROM sub_tasks WHERE id = :i", i=first) == 1500
    assert scalar(engine, "SELECT status FROM webhook_requests") == "processed"


def test_nan_in_a_body_is_refused_not_stored(engine: Engine) -> None:
    first, *_ = _sent_task(engine)
    body = b'{"event": "opened", "subtask_id": 1, "timestamp": 5, "data": {"x": NaN}}'
    outcome = _post(engine, body)
    assert outcome.status == "invalid" and "NaN" in (outcome.error or "")
    assert scalar(engine, "SELECT count(*) FROM events") == 0


def test_events_list_and_reprocess_from_the_cli(
    engine: Engine, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edm.cli import app

    runner = CliRunner()
    first, *_ = _sent_task(engine)
    _post(engine, {"event": "delivered", "timestamp": 5000, "provider_message_id": "late"})
    _post(engine, generic_event("opened", first, 1500, "o"))
    listed = json.loads(
        runner.invoke(app, ["events", "list", "--status", "unmatched", "--json"]).stdout
    )
    assert [(e["event"], e["status"]) for e in listed] == [("delivered", "unmatched")]
    by_task = json.loads(runner.invoke(app, ["events", "list", "--task", "1", "--json"]).stdout)
    assert [e["event"] for e in by_task] == ["opened"]

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET provider_message_id = 'late' WHERE id = :i"), {"i": first}
        )
    result = runner.invoke(app, ["events", "reprocess", "--status", "unmatched"])
    assert result.exit_code == 0 and "1 applied" in result.stdout
    assert scalar(engine, "SELECT count(*) FROM events WHERE status = 'applied'") == 2

    _post(engine, b"{oops")
    invalid = json.loads(
        runner.invoke(app, ["events", "list", "--status", "invalid", "--json"]).stdout
    )
    assert [(r["status"], "not JSON" in r["error"]) for r in invalid] == [("invalid", True)]
    result = runner.invoke(app, ["events", "list", "--status", "bogus"])
    assert result.exit_code == 1 and "--status must be one of" in result.stderr
    result = runner.invoke(app, ["events", "reprocess", "--status", "applied"])
    assert result.exit_code == 1 and "can be reprocessed" in result.stderr


def test_a_body_nested_too_deeply_is_invalid_not_stuck(engine: Engine) -> None:
    _sent_task(engine)
    outcome = _post(engine, b"[" * 50_000 + b"]" * 50_000)
    assert outcome.status == "invalid" and "nested too deeply" in (outcome.error or "")
    assert scalar(engine, "SELECT status FROM webhook_requests") == "invalid"


def test_a_batch_of_requests_is_processed_together(engine: Engine) -> None:
    first, second, third = _sent_task(engine)
    bodies = [
        [
            generic_event("opened", first, 1500, "o1"),
            generic_event("delivered", second, 1400, "d2"),
        ],
        generic_event("opened", first, 1500, "o1"),  # a repeat, in another request
        b"{broken",
        {"event": "delivered", "timestamp": 9, "provider_message_id": "nobody"},
        generic_event("hard", third, 1600, "b3"),
    ]
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        log_request(engine, "generic", {}, raw)
    assert pipeline.process_batch(engine) == 5
    assert pipeline.process_batch(engine) == 0
    with engine.connect() as conn:
        requests = conn.execute(text("SELECT status FROM webhook_requests ORDER BY id")).scalars()
        assert list(requests) == ["processed", "processed", "invalid", "processed", "processed"]
        events = dict(conn.execute(text("SELECT dedupe_key, status FROM events")).all())
    assert events == {
        "id:o1": "applied",
        "id:d2": "applied",
        "id:b3": "applied",
        next(k for k in events if not k.startswith("id:")): "unmatched",
    }
    assert scalar(engine, "SELECT open_count FROM sub_tasks WHERE id = :i", i=first) == 1
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 3") == "bounced"


def test_one_batch_counts_each_fact_once_and_sees_its_own_soft_bounces(engine: Engine) -> None:
    first, second, _ = _sent_task(engine)
    day = 86400.0
    bodies = [
        [
            generic_event("opened", first, 1500, "o1"),
            generic_event("opened", first, 1700, "o2"),
            generic_event("opened", first, 1500, "o1"),  # a repeat inside one request
        ],
        [generic_event("soft", second, 1e6, "s1"), generic_event("soft", second, 1e6 + day, "s2")],
        [
            generic_event("soft", second, 1e6 + 2 * day, "s3"),
            generic_event("opened", first, 1700, "o2"),
        ],
    ]
    for body in bodies:
        log_request(engine, "generic", {}, json.dumps(body).encode())
    assert pipeline.process_batch(engine) == 3
    assert scalar(engine, "SELECT open_count FROM sub_tasks WHERE id = :i", i=first) == 2
    assert scalar(engine, "SELECT opened_at FROM sub_tasks WHERE id = :i", i=first) == 1500
    with engine.connect() as conn:
        duplicates = dict(conn.execute(text("SELECT dedupe_key, duplicates FROM events")).all())
    assert duplicates == {"id:o1": 1, "id:o2": 1, "id:s1": 0, "id:s2": 0, "id:s3": 0}
    # The three soft bounces arrived together, and together they reach the limit.
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 2") == "bounced"


def test_contact_rules_for_bounces(engine: Engine, env: dict[str, str]) -> None:
    first, second, third = _sent_task(engine)
    # The provider says the address does not exist: invalid rather than bounced.
    _post(
        engine,
        {
            "event": "bounce",
            "subtask_id": first,
            "timestamp": 10,
            "data": {"bounce_type": "hard", "address_invalid": True},
        },
    )
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 1") == "invalid"
    # Three soft bounces within 30 days make a contact bounced; two, or three spread over
    # more than 30 days, do not.
    day = 86400.0
    for i, at in enumerate((0, 10 * day, 45 * day)):
        _post(engine, generic_event("soft", second, 1e6 + at, f"s2-{i}"))
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 2") == "active"
    for i, at in enumerate((0, 10 * day, 29 * day)):
        _post(engine, generic_event("soft", third, 1e6 + at, f"s3-{i}"))
    assert scalar(engine, "SELECT status FROM contacts WHERE id = 3") == "bounced"
    assert scalar(engine, "SELECT status_reason FROM contacts WHERE id = 3") == "3 soft bounces"


def test_a_batch_cut_off_by_the_database_is_taken_again_once_it_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only once its claim is STALE_PROCESSING_SECONDS old: a webhook answered 200
    just before an outage is applied as soon as the database is back."""
    from sqlalchemy.exc import OperationalError

    from edm.events.processor import BatchProcessor

    body = json.dumps({"event": "delivered", "subtask_id": 1, "timestamp": 1}).encode()
    request_id = log_request(engine, "generic", {}, body)
    process = pipeline._process_claimed
    cut_off = threading.Event()

    def fails_once(*args: object) -> object:
        if not cut_off.is_set():
            cut_off.set()
            raise OperationalError("UPDATE ...", {}, Exception("server closed the connection"))
        return process(*args)

    monkeypatch.setattr(pipeline, "_process_claimed", fails_once)
    processor = BatchProcessor(engine)
    processor.start()
    try:
        processor.notify()
        deadline = time.monotonic() + 10
        while scalar(engine, "SELECT status FROM webhook_requests WHERE id = :i", i=request_id) != (
            "processed"
        ):
            assert time.monotonic() < deadline, "the request was not taken again"
            time.sleep(0.05)
    finally:
        processor.stop()
    assert cut_off.is_set()
