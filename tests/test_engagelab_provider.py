"""The EngageLab provider against a fake EngageLab on loopback: the request it makes, how it
keeps one connection, and how every kind of answer becomes one of our error classes."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from email.utils import formatdate

import httpx
import pytest

from edm.messages import tracking_headers
from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    ProviderError,
    RecipientError,
    RequestError,
    SendResult,
    ServiceError,
    TransientError,
    UnknownOutcomeError,
)
from edm.providers.engagelab import EngageLabProvider, about_recipient, retry_after_seconds
from edm.providers.registry import make_provider
from tests.fake_engagelab import FakeEngageLab
from tests.fake_engagelab import engagelab as engagelab  # noqa: F401 - the fixture

FAST = "0.3"  # seconds: the provider's timeout in these tests


def message(key: str = "key-0001", **changes: object) -> OutgoingMessage:
    fields: dict = {
        "sub_task_id": 41,
        "task_id": 7,
        "idempotency_key": key,
        "to_email": "alice@example.com",
        "to_name": "Alice Example",
        "from_addr": "News <news@shop.example>",
        "subject": "Spring sale",
        "html": "<p>Hello Alice</p>",
        "text": "Hello Alice\n",
    }
    fields.update(changes)
    fields.setdefault(
        "headers",
        tracking_headers(
            idempotency_key=fields["idempotency_key"],
            from_addr=fields["from_addr"],
            sub_task_id=fields["sub_task_id"],
            task_id=fields["task_id"],
            unsubscribe="https://edm.example/unsubscribe/41.3.abc",
        ),
    )
    return OutgoingMessage(**fields)


def provider_for(fake: FakeEngageLab, **options: str) -> EngageLabProvider:
    return EngageLabProvider("el", {**fake.options, "timeout": FAST, **options})


def run(provider: EngageLabProvider, *messages: OutgoingMessage) -> list[SendResult]:
    """Send the messages one after another with one provider, then close it."""

    async def go() -> list[SendResult]:
        try:
            return [await provider.send(m) for m in messages]
        finally:
            await provider.close()

    return asyncio.run(go())


def failure(provider: EngageLabProvider, msg: OutgoingMessage | None = None) -> ProviderError:
    """The error one send raises (the test fails if it succeeds or raises something else)."""
    with pytest.raises(ProviderError) as caught:
        run(provider, msg or message())
    return caught.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the request -----------------------------------------------------------------------------
def test_request_matches_the_documented_shape(engagelab: FakeEngageLab) -> None:
    msg = message()
    [result] = run(provider_for(engagelab), msg)

    [request] = engagelab.requests
    assert (request.method, request.path) == ("POST", "/v1/mail/send")
    credentials = base64.b64encode(f"{engagelab.api_user}:{engagelab.api_key}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == {
        "from": "News <news@shop.example>",
        "to": ["alice@example.com"],
        "body": {
            "subject": "Spring sale",
            "content": {"html": "<p>Hello Alice</p>", "text": "Hello Alice\n"},
            "headers": msg.headers,
            "settings": {"send_mode": 0, "return_email_id": True},
        },
        "custom_args": {"edm_subtask": "41", "edm_task": "7"},
        "request_id": "key-0001",
    }
    assert set(msg.headers) == {
        "Message-ID",
        "X-EDM-Subtask",
        "X-EDM-Task",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    }
    [accepted] = engagelab.accepted
    assert result.provider_message_id == accepted.email_ids[0]
    assert len(result.provider_message_id) > 100
    assert result.provider_message_id.endswith("0$alice@example.com")


def test_sender_falls_back_to_the_from_option(engagelab: FakeEngageLab) -> None:
    run(provider_for(engagelab, **{"from": "Shop <shop@shop.example>"}), message(from_addr=None))
    assert engagelab.requests[0].json["from"] == "Shop <shop@shop.example>"


def test_no_sender_at_all_is_a_request_error_before_any_call(engagelab: FakeEngageLab) -> None:
    error = failure(provider_for(engagelab), message(from_addr=None))
    assert isinstance(error, RequestError)
    assert engagelab.requests == []


def test_over_the_documented_limits_is_refused_locally(engagelab: FakeEngageLab) -> None:
    big = {**message().headers, "X-Padding": "x" * 1000}
    error = failure(provider_for(engagelab), message(headers=big))
    assert isinstance(error, RequestError)
    assert "headers" in str(error) and "1024" in str(error)
    error = failure(provider_for(engagelab), message(subject="s" * 257))
    assert isinstance(error, RequestError) and "256" in str(error)
    assert engagelab.requests == []


def test_repeated_key_gets_the_earlier_email_id_and_is_taken_once(
    engagelab: FakeEngageLab,
) -> None:
    first, again, other = run(
        provider_for(engagelab), message("key-a"), message("key-a"), message("key-b")
    )
    assert again.provider_message_id == first.provider_message_id
    assert other.provider_message_id != first.provider_message_id
    assert len(engagelab.requests) == 3
    assert [a.request_id for a in engagelab.accepted] == ["key-a", "key-b"]


def test_one_client_and_one_connection_for_many_messages(engagelab: FakeEngageLab) -> None:
    provider = provider_for(engagelab)
    clients = []

    async def go() -> None:
        for n in range(3):
            await provider.send(message(f"key-{n}"))
            clients.append(provider._client)
        await provider.close()

    asyncio.run(go())
    assert clients[0] is not None and all(c is clients[0] for c in clients)
    assert clients[0].is_closed and provider._client is None
    assert len({r.client_port for r in engagelab.requests}) == 1
    assert len(engagelab.accepted) == 3


# -- each kind of answer -------------------------------------------------------------------------
def test_bad_credentials_freeze_the_service(engagelab: FakeEngageLab) -> None:
    error = failure(provider_for(engagelab, api_key="wrong"))
    assert isinstance(error, ServiceError)
    assert error.code == "30401" and "Authentication failed" in str(error)
    assert engagelab.accepted == []


def test_forbidden_freezes_the_service(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(403, {"code": 30403, "message": "Account is suspended"})
    error = failure(provider_for(engagelab))
    assert isinstance(error, ServiceError)
    assert error.code == "30403" and "Account is suspended" in str(error)


def test_a_wrong_endpoint_freezes_the_service(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(404, "not found")
    error = failure(provider_for(engagelab))
    assert isinstance(error, ServiceError) and "base_url" in str(error)


def test_request_timeout_answer_is_transient(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(408, "timeout")
    assert isinstance(failure(provider_for(engagelab)), TransientError)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("2.5", 2.5), (None, 60.0)],
)
def test_throttled_is_transient_with_retry_after(
    engagelab: FakeEngageLab, header: str | None, expected: float
) -> None:
    engagelab.fail_next(429, {"code": 30429, "message": "Too many requests"}, retry_after=header)
    error = failure(provider_for(engagelab))
    assert isinstance(error, TransientError)
    assert error.retry_after == expected
    assert error.code == "30429" and "Too many requests" in str(error)


def test_throttled_with_an_http_date(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(429, retry_after=formatdate(time.time() + 30, usegmt=True))
    error = failure(provider_for(engagelab))
    assert isinstance(error, TransientError)
    assert error.retry_after is not None and 25 <= error.retry_after <= 31


def test_server_error_is_unknown_and_the_same_key_settles_it(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(500, {"code": 30500, "message": "Internal error"}, accept=True)
    provider = provider_for(engagelab)
    error = failure(provider)
    assert isinstance(error, UnknownOutcomeError)
    assert error.retry_after is None and error.code == "30500"
    [resent] = run(provider, message())
    [accepted] = engagelab.accepted
    assert resent.provider_message_id == accepted.email_ids[0]


def test_server_error_carries_retry_after(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(503, retry_after="12")
    error = failure(provider_for(engagelab))
    assert isinstance(error, UnknownOutcomeError) and error.retry_after == 12.0


def test_answer_without_email_ids_is_unknown(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(200, {"request_id": "key-0001"})
    assert isinstance(failure(provider_for(engagelab)), UnknownOutcomeError)


def test_redirect_means_a_wrong_base_url(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(301, {}, headers={"Location": "https://elsewhere.example/v1/mail/send"})
    error = failure(provider_for(engagelab))
    assert isinstance(error, ServiceError) and "elsewhere.example" in str(error)


@pytest.mark.parametrize("accept", [False, True])
def test_no_answer_in_time_is_unknown(engagelab: FakeEngageLab, accept: bool) -> None:
    engagelab.hang_next(5.0, accept=accept)
    provider = provider_for(engagelab)
    started = time.monotonic()
    error = failure(provider)
    assert isinstance(error, UnknownOutcomeError)
    assert time.monotonic() - started < 2.0
    assert len(engagelab.accepted) == (1 if accept else 0)
    # Resending with the same key inside the window cannot send it twice.
    [resent] = run(provider, message())
    [accepted] = engagelab.accepted
    assert resent.provider_message_id == accepted.email_ids[0]


def test_connection_refused_is_transient() -> None:
    provider = EngageLabProvider(
        "el",
        {"api_user": "u", "api_key": "k", "base_url": f"http://127.0.0.1:{closed_port()}"},
    )
    assert isinstance(failure(provider), TransientError)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError, TransientError),
        (httpx.ConnectTimeout, TransientError),
        (httpx.PoolTimeout, TransientError),
        (httpx.ReadTimeout, UnknownOutcomeError),
        (httpx.WriteTimeout, UnknownOutcomeError),
        (httpx.ReadError, UnknownOutcomeError),
        (httpx.RemoteProtocolError, UnknownOutcomeError),
    ],
)
def test_transport_failures(exc: type[httpx.TransportError], kind: type[ProviderError]) -> None:
    """Failures that loopback cannot produce on demand, raised by a mock transport."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)

    provider = EngageLabProvider("el", {"api_user": "u", "api_key": "k"})
    provider._client = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    assert type(failure(provider)) is kind


def test_recipient_refused_fails_the_sub_task_as_recipient(engagelab: FakeEngageLab) -> None:
    error = failure(provider_for(engagelab), message(to_email="not-an-address"))
    assert isinstance(error, RecipientError)
    assert error.code == "30804" and "Invalid email address in to" in str(error)


def test_request_refused_fails_the_sub_task_as_request(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(400, {"code": 30801, "message": "From can not be empty"})
    error = failure(provider_for(engagelab))
    assert isinstance(error, RequestError)
    assert error.code == "30801" and "From can not be empty" in str(error)


def test_error_without_json_body_keeps_the_text(engagelab: FakeEngageLab) -> None:
    engagelab.fail_next(422, "upstream said no")
    error = failure(provider_for(engagelab))
    assert isinstance(error, RequestError) and "upstream said no" in str(error)
    assert error.code is None


@pytest.mark.parametrize(
    ("text", "recipient"),
    [
        ("Invalid email address in to: bob", True),
        ("recipient does not exist", True),
        ("Illegal recipient", True),
        ("to address is illegal", True),
        ("invalid to", True),
        ("Recipient address rejected: user unknown", True),
        ("From can not be empty", False),
        ("invalid from address", False),
        ("Sender address rejected", False),
        ("Unable to send: invalid subject", False),
        ("To can not exceed 100 recipients", False),
        ("To can not be empty", False),
        ("IP address blocked", False),
        ("Invalid api_user", False),
        ("", False),
    ],
)
def test_which_4xx_texts_blame_the_recipient(text: str, recipient: bool) -> None:
    assert about_recipient(text) is recipient


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(formatdate(1000.0 + 90, usegmt=True), now=1000.0) == 90.0
    assert retry_after_seconds(formatdate(1000.0 - 90, usegmt=True), now=1000.0) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds(None) is None


# -- options -------------------------------------------------------------------------------
GOOD = {"api_user": "u", "api_key": "k"}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"api_key": "k"}, "api_user"),
        ({"api_user": "u"}, "api_key"),
        ({**GOOD, "api_key": " "}, "api_key"),
        ({**GOOD, "base_url": "ftp://example.com"}, "base_url"),
        ({**GOOD, "base_url": "email.api.engagelab.cc"}, "base_url"),
        ({**GOOD, "timeout": "soon"}, "timeout"),
        ({**GOOD, "timeout": "0"}, "timeout"),
        ({**GOOD, "timeout": "-1"}, "timeout"),
        ({**GOOD, "webhook_verify": "maybe"}, "webhook_verify"),
        ({**GOOD, "from": ""}, "from"),
        ({**GOOD, "colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_named(options: dict[str, str], named: str) -> None:
    with pytest.raises(OptionError, match=named):
        EngageLabProvider("el", options)


def test_option_defaults_and_no_network_at_start() -> None:
    provider = EngageLabProvider("el", GOOD)
    assert provider.base_url == "https://email.api.engagelab.cc"
    assert provider.timeout == 10.0
    assert provider.webhook_verify is True and provider.webhook_key is None
    assert provider._client is None
    configured = EngageLabProvider(
        "el",
        {
            **GOOD,
            "base_url": f"http://127.0.0.1:{closed_port()}/",
            "webhook_key": "app-key",
            "webhook_verify": "False",
        },
    )
    assert not configured.base_url.endswith("/")
    assert configured.webhook_key == "app-key" and configured.webhook_verify is False


def test_registered_under_its_name() -> None:
    assert isinstance(make_provider("engagelab", "el", GOOD), EngageLabProvider)


# -- the fake itself -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"from": ""}, 30801),
        ({"to": []}, 30802),
        ({"to": [f"r{n}@example.com" for n in range(101)]}, 30803),
        ({"body": {"subject": "", "content": {"text": "t"}}}, 30806),
        ({"body": {"subject": "s", "content": {}}}, 30808),
        ({"custom_args": {"edm.subtask": "1"}}, 30811),
    ],
)
def test_fake_refuses_what_engagelab_refuses(
    engagelab: FakeEngageLab, change: dict, code: int
) -> None:
    payload = {**EngageLabProvider("el", engagelab.options).request_body(message()), **change}
    answer = httpx.post(
        engagelab.base_url + "/v1/mail/send",
        json=payload,
        auth=(engagelab.api_user, engagelab.api_key),
    )
    assert answer.status_code == 400 and answer.json()["code"] == code
    assert engagelab.accepted == []
