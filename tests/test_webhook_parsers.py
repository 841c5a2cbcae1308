"""Webhook parsers and signature checks: pure functions over decoded JSON and headers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edm.events.parsers.base import EVENT_TYPES, IGNORED, WebhookParseError, derived_key
from edm.events.parsers.engagelab import EngageLabParser
from edm.events.parsers.generic import FIELDS as GENERIC_FIELDS
from edm.events.parsers.generic import GenericParser
from edm.events.parsers.registry import PARSERS, parser_for
from edm.events.signatures import bearer_or_basic_token, engagelab_signature_valid

ENGAGELAB = EngageLabParser()
GENERIC = GenericParser()

REQUEST = "1700000000000_100001_12345_6789.sc-10_43_7_16-inbound"
EMAIL_ID = REQUEST + "0$alice@example.com"
ITIME = 1700000009450


def status(message_status: str, status_data: dict[str, Any] | None = None, **extra: Any) -> dict:
    body = {
        "server": "email",
        "message_id": REQUEST,
        "to": "Alice@Example.com ",
        "from": "news@shop.example",
        "subject": "Hello",
        "itime": ITIME,
        "custom_args": {"edm_subtask": "42", "edm_task": "7"},
        "status": {
            "message_status": message_status,
            "status_data": {"email_id": EMAIL_ID, "task_id": "-1"}
            if status_data is None
            else status_data,
        },
    }
    return body | extra


def response(event: str, response_data: dict[str, Any] | None = None, **extra: Any) -> dict:
    body = status("x") | extra
    del body["status"]
    data = {"email_id": EMAIL_ID} if response_data is None else response_data
    body["response"] = {"event": event, "response_data": data}
    return body


# -- EngageLab ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sent", "accepted"),
        ("delivered", "delivered"),
        ("soft_bounce", "soft_bounce"),
        ("invalid_email", "hard_bounce"),
    ],
)
def test_engagelab_status_envelope(raw: str, expected: str) -> None:
    [event] = ENGAGELAB.parse(status(raw))
    assert event.event == expected
    assert event.occurred_at == ITIME / 1000
    assert event.sub_task_id == 42
    assert event.task_id == 7
    assert event.provider_message_id == EMAIL_ID
    assert event.recipient == "alice@example.com"
    assert event.message_id is None
    assert event.data["provider_event"] == raw
    assert event.dedupe_key == derived_key("engagelab", EMAIL_ID, raw, ITIME / 1000)


def test_engagelab_target_gives_one_event_per_recipient() -> None:
    ids = [REQUEST + "0$a@x.example", REQUEST + "1$b@x.example", REQUEST + "2$c@x.example"]
    body = status(
        "target",
        {"email_ids": ids, "tos": ["A@x.example", "b@x.example", "c@x.example"]},
    )
    events = ENGAGELAB.parse(body)
    assert [e.event for e in events] == ["accepted"] * 3
    assert [e.provider_message_id for e in events] == ids
    assert [e.recipient for e in events] == ["a@x.example", "b@x.example", "c@x.example"]
    assert len({e.dedupe_key for e in events}) == 3
    assert all(e.sub_task_id == 42 for e in events)


def test_engagelab_target_tos_beside_status_data() -> None:
    body = status("target", {"email_ids": ["e1", "e2"]}, tos=["a@x.example", "b@x.example"])
    assert [e.recipient for e in ENGAGELAB.parse(body)] == ["a@x.example", "b@x.example"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("open", "opened"),
        ("click", "clicked"),
        ("unsubscribe", "unsubscribed"),
        ("report_spam", "complained"),
    ],
)
def test_engagelab_response_envelope(raw: str, expected: str) -> None:
    [event] = ENGAGELAB.parse(response(raw))
    assert event.event == expected
    assert event.provider_message_id == EMAIL_ID
    assert event.sub_task_id == 42
    assert event.data == {"provider_event": raw}


def test_engagelab_route_and_unknown_names_are_ignored() -> None:
    [route] = ENGAGELAB.parse(response("route"))
    assert route.event == IGNORED and route.data["provider_event"] == "route"
    [new_status] = ENGAGELAB.parse(status("deferred_forever"))
    assert new_status.event == IGNORED
    assert new_status.data["provider_event"] == "deferred_forever"
    [new_action] = ENGAGELAB.parse(response("forward"))
    assert new_action.event == IGNORED and new_action.data["provider_event"] == "forward"


def test_engagelab_bounce_reason_and_click_url() -> None:
    [hard] = ENGAGELAB.parse(status("invalid_email", {"email_id": "e", "Reason": "550 no user"}))
    assert hard.data == {
        "provider_event": "invalid_email",
        "bounce_type": "hard",
        "reason": "550 no user",
        "address_invalid": True,  # the contact becomes invalid rather than bounced
    }
    [soft] = ENGAGELAB.parse(status("soft_bounce", {"email_id": "e", "msg": "mailbox full"}))
    assert soft.data["bounce_type"] == "soft" and soft.data["reason"] == "mailbox full"
    [bare] = ENGAGELAB.parse(status("soft_bounce", {"email_id": "e"}))
    assert bare.data == {"provider_event": "soft_bounce", "bounce_type": "soft"}
    [click] = ENGAGELAB.parse(response("click", {"email_id": "e", "link": "https://x.example/a"}))
    assert click.data["url"] == "https://x.example/a"


def test_engagelab_array_body() -> None:
    events = ENGAGELAB.parse([status("delivered"), response("open"), response("route")])
    assert [e.event for e in events] == ["delivered", "opened", IGNORED]
    assert ENGAGELAB.parse([]) == []


def test_engagelab_tolerates_extras_and_odd_custom_args() -> None:
    body = status("delivered", new_field={"x": [1, 2]}, another=None)
    body["status"]["status_data"]["surprise"] = True
    assert ENGAGELAB.parse(body)[0].event == "delivered"

    as_string = status("delivered", custom_args=json.dumps({"edm_subtask": "9", "edm_task": 3}))
    [event] = ENGAGELAB.parse(as_string)
    assert (event.sub_task_id, event.task_id) == (9, 3)

    for args in (None, "not json", "[1]", {"edm_subtask": "abc"}, {"edm_subtask": True}, [1]):
        [event] = ENGAGELAB.parse(status("delivered", custom_args=args))
        assert event.sub_task_id is None
    missing = status("delivered")
    del missing["custom_args"]
    assert ENGAGELAB.parse(missing)[0].sub_task_id is None


def test_engagelab_recipient_list_and_seconds() -> None:
    [event] = ENGAGELAB.parse(status("delivered", to=[" Bob@X.example", "c@x.example"]))
    assert event.recipient == "bob@x.example"
    [event] = ENGAGELAB.parse(status("delivered", itime=1700000009))
    assert event.occurred_at == 1700000009.0
    [event] = ENGAGELAB.parse(status("delivered", itime="1700000009450"))
    assert event.occurred_at == ITIME / 1000


def test_engagelab_dedupe_key() -> None:
    first = ENGAGELAB.parse(status("delivered"))[0].dedupe_key
    assert ENGAGELAB.parse(status("delivered"))[0].dedupe_key == first
    assert ENGAGELAB.parse(status("delivered", itime=ITIME + 1))[0].dedupe_key != first
    assert ENGAGELAB.parse(status("sent"))[0].dedupe_key != first
    # Without an email_id, the request's message id and the recipient stand in.
    no_id = status("delivered", {})
    [event] = ENGAGELAB.parse(no_id)
    assert event.provider_message_id is None
    assert event.dedupe_key == derived_key(
        "engagelab", f"{REQUEST}$alice@example.com", "delivered", ITIME / 1000
    )


def _without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("text", "body must be"),
        (42, "body must be"),
        (None, "body must be"),
        ([status("delivered"), "x"], "event 1: must be an object"),
        ([status("delivered"), _without(status("delivered"), "itime")], "event 1: `itime`"),
        (status("delivered", itime="soon"), "event 0: `itime` must be a number"),
        (status("delivered", itime=True), "`itime` must be a number"),
        (status("delivered", itime=-5), "`itime` is out of range"),
        (status("delivered", itime=10**400), "`itime` is out of range"),
        (status("delivered", itime=float("nan")), "`itime` is out of range"),
        (_without(status("delivered"), "status"), "neither `status` nor `response`"),
        (status("delivered", status="delivered"), "`status` must be an object"),
        (response("open") | {"response": "open"}, "`response` must be an object"),
        (status("delivered", status={"status_data": {}}), "`status.message_status`"),
        (status("delivered", [1]), "`status.status_data` must be an object"),
        (response("open", "x"), "`response.response_data` must be an object"),
        (status("delivered") | {"response": {"event": "open"}}, "both"),
    ],
)
def test_engagelab_bad_shapes(body: Any, fragment: str) -> None:
    with pytest.raises(WebhookParseError) as caught:
        ENGAGELAB.parse(body)
    assert fragment in str(caught.value)


def test_one_bad_element_fails_the_whole_body() -> None:
    with pytest.raises(WebhookParseError, match="event 2"):
        ENGAGELAB.parse([status("delivered"), status("sent"), {"itime": ITIME}])


# -- generic --------------------------------------------------------------------------------------
def generic(event: str, **fields: Any) -> dict:
    return {"event": event, "subtask_id": 42, "timestamp": 1700000000} | fields


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_generic_each_event_type(name: str) -> None:
    [event] = GENERIC.parse(generic(name))
    assert event.event == name
    assert event.sub_task_id == 42
    assert event.occurred_at == 1700000000.0
    if name.endswith("_bounce"):
        assert event.data["bounce_type"] == name.removesuffix("_bounce")


@pytest.mark.parametrize(("kind", "expected"), [("hard", "hard_bounce"), ("soft", "soft_bounce")])
def test_generic_bounce(kind: str, expected: str) -> None:
    [event] = GENERIC.parse(generic("bounce", data={"bounce_type": kind, "reason": "550"}))
    assert event.event == expected
    assert event.data == {"bounce_type": kind, "reason": "550"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, 1700000000.0),
        (1700000000.25, 1700000000.25),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T22:13:20+00:00", 1700000000.0),
        ("2023-11-15T06:13:20+08:00", 1700000000.0),
        ("2023-11-14T22:13:20", 1700000000.0),
        ("2023-11-14 22:13:20.5", 1700000000.5),
    ],
)
def test_generic_timestamps(value: Any, expected: float) -> None:
    assert GENERIC.parse(generic("opened", timestamp=value))[0].occurred_at == expected


def test_generic_identifiers() -> None:
    [event] = GENERIC.parse(
        {
            "event": "delivered",
            "subtask_id": "42",
            "task_id": "7",
            "message_id": "abc@shop.example",
            "provider_message_id": " p-1 ",
            "recipient": " Alice@Example.com",
            "timestamp": 1,
        }
    )
    assert event.sub_task_id == 42 and event.task_id == 7
    assert event.message_id == "<abc@shop.example>"
    assert event.provider_message_id == "p-1"
    assert event.recipient == "alice@example.com"
    [event] = GENERIC.parse({"event": "opened", "message_id": "<k@d>", "timestamp": 1})
    assert event.message_id == "<k@d>"


def test_generic_dedupe_key() -> None:
    with_id = GENERIC.parse(generic("opened", event_id="evt-1"))[0]
    assert with_id.dedupe_key == "id:evt-1"
    assert GENERIC.parse(generic("clicked", event_id="evt-1", timestamp=5))[0].dedupe_key == (
        "id:evt-1"
    )
    long_id = GENERIC.parse(generic("opened", event_id="x" * 500))[0].dedupe_key
    assert long_id.startswith("id:sha256:") and len(long_id) <= 200

    derived = GENERIC.parse(generic("opened"))[0].dedupe_key
    assert GENERIC.parse(generic("opened"))[0].dedupe_key == derived
    assert GENERIC.parse(generic("opened", timestamp=1700000001))[0].dedupe_key != derived
    assert GENERIC.parse(generic("clicked"))[0].dedupe_key != derived
    assert GENERIC.parse(generic("opened", subtask_id=43))[0].dedupe_key != derived
    # `bounce` + hard and `hard_bounce` are the same fact.
    bounce = GENERIC.parse(generic("bounce", data={"bounce_type": "hard"}))[0].dedupe_key
    assert GENERIC.parse(generic("hard_bounce"))[0].dedupe_key == bounce


def test_generic_list_body() -> None:
    events = GENERIC.parse([generic("delivered"), generic("opened", recipient="a@x.example")])
    assert [e.event for e in events] == ["delivered", "opened"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("x", "body must be"),
        ([generic("opened"), 3], "event 1: must be an object"),
        (generic("bounced"), "event 0: event: unknown event 'bounced'"),
        (generic("ignored"), "event: unknown event"),
        ({"subtask_id": 1, "timestamp": 1}, "event: required"),
        (generic("bounce"), "data.bounce_type"),
        (generic("bounce", data={"bounce_type": "medium"}), "data.bounce_type"),
        (generic("bounce", data={"bounce_type": ["hard"]}), "data.bounce_type"),
        (generic("soft_bounce", data={"bounce_type": "hard"}), "data.bounce_type"),
        (generic("opened", data=[1]), "data: must be an object"),
        (_without(generic("opened"), "timestamp"), "timestamp: required"),
        (generic("opened", timestamp="yesterday"), "timestamp: not an ISO 8601"),
        (generic("opened", timestamp=1700000000000), "timestamp: 1700000000000 is too large"),
        (generic("opened", timestamp=-1), "timestamp: out of range"),
        (generic("opened", timestamp=True), "timestamp: must be"),
        (generic("opened", timestamp=float("inf")), "timestamp: out of range"),
        (generic("opened", subtask_id="abc"), "subtask_id: must be a positive integer"),
        (generic("opened", subtask_id=0), "subtask_id: must be a positive integer"),
        (generic("opened", subtask_id=2**64), "subtask_id: must be a positive integer"),
        (generic("opened", task_id=1.5), "task_id: must be a positive integer"),
        (generic("opened", recipient="nobody"), "recipient: not an email address"),
        (generic("opened", message_id=5), "message_id: must be a string"),
        (generic("opened", provider_message_id="p" * 1001), "provider_message_id: longer"),
        (generic("opened", event_id=["a"]), "event_id: must be a string"),
        (generic("opened", subtaskid=1), "subtaskid: unknown field"),
        ({"event": "opened", "timestamp": 1, "task_id": 1}, "one of subtask_id"),
    ],
)
def test_generic_errors_name_the_field(body: Any, fragment: str) -> None:
    with pytest.raises(WebhookParseError) as caught:
        GENERIC.parse(body)
    assert fragment in str(caught.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)
FIELD = st.sampled_from(sorted(GENERIC_FIELDS))
NEAR_VALID = st.dictionaries(
    FIELD,
    JSON
    | st.sampled_from([*EVENT_TYPES, "bounce", "2024-01-01T00:00:00Z", "a@b.example", "12"])
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.fixed_dictionaries({"bounce_type": st.sampled_from(["hard", "soft", "x"]) | JSON}),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(JSON, NEAR_VALID, st.lists(NEAR_VALID, max_size=3)))
def test_generic_parser_only_raises_parse_errors(body: Any) -> None:
    with contextlib.suppress(WebhookParseError):
        GENERIC.parse(body)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.lists(JSON, max_size=3)))
def test_engagelab_parser_only_raises_parse_errors(body: Any) -> None:
    with contextlib.suppress(WebhookParseError):
        ENGAGELAB.parse(body)


def test_registry() -> None:
    assert set(PARSERS) == {"engagelab", "generic"}
    assert parser_for("engagelab") is PARSERS["engagelab"]
    assert parser_for(" Generic") is PARSERS["generic"]
    assert parser_for("smtp") is None


# -- signatures -----------------------------------------------------------------------------------
KEYS = ["key-one", "key-two", "key-three"]
TIMESTAMP = "1700000009"


def md5_headers(key: str) -> dict[str, str]:
    digest = hashlib.md5((TIMESTAMP + "email" + key).encode()).hexdigest()
    return {
        "X-WebHook-Timestamp": TIMESTAMP,
        "X-WebHook-AppKey": "email",
        "X-WebHook-Signature": digest,
    }


def hmac_headers(key: str) -> dict[str, str]:
    digest = hmac.new(key.encode(), TIMESTAMP.encode(), hashlib.sha256).hexdigest()
    return md5_headers(key) | {"X-WebHook-Signature": digest}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make", [md5_headers, hmac_headers])
def test_signature_either_recipe_with_any_key(key: str, make: Any) -> None:
    headers = make(key)
    assert engagelab_signature_valid(headers, KEYS)
    assert engagelab_signature_valid(headers, [key])
    upper = headers | {"X-WebHook-Signature": headers["X-WebHook-Signature"].upper()}
    assert engagelab_signature_valid(upper, KEYS)
    cased = {
        name.lower() if i % 2 else name.upper(): v for i, (name, v) in enumerate(headers.items())
    }
    assert engagelab_signature_valid(cased, KEYS)


def test_signature_refused() -> None:
    good = md5_headers("key-two")
    assert not engagelab_signature_valid(good, ["other"])
    assert not engagelab_signature_valid(good, [])
    assert not engagelab_signature_valid(good | {"X-WebHook-Timestamp": "1700000010"}, KEYS)
    assert not engagelab_signature_valid(good | {"X-WebHook-Signature": "0" * 32}, KEYS)
    assert not engagelab_signature_valid(good | {"X-WebHook-Signature": "é" * 32}, KEYS)
    for name in good:
        assert not engagelab_signature_valid(_without(good, name), KEYS)
    assert not engagelab_signature_valid({}, KEYS)
    # An empty key is never used: anybody could sign with it.
    assert not engagelab_signature_valid(hmac_headers(""), ["", "key-one"])


def _basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer s3cret", "s3cret"),
        ("bearer   s3cret ", "s3cret"),
        (_basic(b"edm:s3cret"), "s3cret"),
        (_basic(b":s3cret"), "s3cret"),
        (_basic(b"user:pa:ss"), "pa:ss"),
        ("basic " + base64.b64encode(b"u:p").decode(), "p"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Token s3cret", None),
        ("s3cret", None),
        ("Basic", None),
        ("Basic !!!not-base64", None),
        ("Basic dXNlcjpwYQ", None),  # missing padding
        ("Basic é", None),
        (_basic(b"no-colon"), None),
        (_basic(b"user:"), None),
        (_basic(b"\xff\xfe:x"), None),
    ],
)
def test_bearer_or_basic_token(header: str | None, expected: str | None) -> None:
    assert bearer_or_basic_token(header) == expected
