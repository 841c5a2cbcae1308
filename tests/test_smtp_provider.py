"""The SMTP provider against a real SMTP server on 127.0.0.1 (tests/smtp_server.py)."""

# ruff: noqa: F811 - the imported smtp_server fixture is requested by name as an argument

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TypeVar

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
from edm.providers.registry import make_provider
from edm.providers.smtp import SMTPProvider
from tests.smtp_server import SMTPTestServer, smtp_server  # noqa: F401

T = TypeVar("T")

UNSUBSCRIBE = "https://edm.example.com/unsubscribe/12.34." + "Ab0-_" * 20  # longer than a line


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def outgoing(number: int = 1, **changes: object) -> OutgoingMessage:
    from_addr = changes.pop("from_addr", "News <news@example.com>")
    fields: dict = {
        "sub_task_id": 100 + number,
        "task_id": 7,
        "idempotency_key": f"key{number:04d}",
        "to_email": f"user{number}@example.org",
        "to_name": "Ada Lovelace",
        "from_addr": from_addr,
        "subject": f"Hello {number}",
        "html": "<p>Hello <b>Ada</b></p>",
        "text": "Hello Ada\n",
        "headers": tracking_headers(
            idempotency_key=f"key{number:04d}",
            from_addr=from_addr,  # type: ignore[arg-type]
            sub_task_id=100 + number,
            task_id=7,
            unsubscribe=UNSUBSCRIBE,
        ),
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def provider_for(server: SMTPTestServer, **options: str) -> SMTPProvider:
    base = {"host": server.host, "port": str(server.port), "security": "none", "helo": "t.test"}
    return SMTPProvider("test-smtp", {**base, **options})


async def send_all(provider: SMTPProvider, *messages: OutgoingMessage) -> list[SendResult]:
    try:
        return [await provider.send(m) for m in messages]
    finally:
        await provider.close()


async def send_failing(provider: SMTPProvider, message: OutgoingMessage) -> ProviderError:
    try:
        await provider.send(message)
    except ProviderError as exc:
        return exc
    finally:
        await provider.close()
    raise AssertionError("the send did not fail")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the message ----------------------------------------------------------------------------------
def test_message_carries_our_headers_exactly_and_both_parts(smtp_server: SMTPTestServer) -> None:
    message = outgoing()
    [result] = run(send_all(provider_for(smtp_server), message))

    [got] = smtp_server.messages
    assert got.mail_from == "news@example.com"
    assert got.rcpt_tos == ["user1@example.org"]
    parsed = got.message
    assert parsed["From"] == "News <news@example.com>"
    assert parsed["To"] == "Ada Lovelace <user1@example.org>"
    assert parsed["Subject"] == "Hello 1"
    assert parsed["Date"] is not None
    assert parsed["Message-ID"] == "<key0001@example.com>" == message.headers["Message-ID"]
    assert result.provider_message_id == "<key0001@example.com>"
    assert parsed["X-EDM-Subtask"] == "101"
    assert parsed["X-EDM-Task"] == "7"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # On the wire, not only after parsing: clients read List-Unsubscribe literally, so a long
    # URL must not be folded into encoded words.
    assert f"\r\nList-Unsubscribe: <{UNSUBSCRIBE}>\r\n".encode() in got.raw
    assert b"\r\nMessage-ID: <key0001@example.com>\r\n" in got.raw
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Hello Ada\n"
    assert parts[1].get_content().strip() == "<p>Hello <b>Ada</b></p>"


def test_non_ascii_subject_name_and_body_survive(smtp_server: SMTPTestServer) -> None:
    message = outgoing(
        subject="Grüße aus Köln — 你好, a subject long enough to be folded over two lines",
        to_name='Zoë "Ñandú" Łukasiewicz, 李',
        text="Liebe Zoë,\n.ein Punkt am Zeilenanfang\n你好\n",
        html="<p>Liebe Zoë, 你好</p>",
    )
    run(send_all(provider_for(smtp_server), message))

    [got] = smtp_server.messages
    assert got.raw.isascii()  # 7-bit clean: no server needs 8BITMIME
    parsed = got.message
    assert parsed["Subject"] == message.subject
    [to] = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == (message.to_name, "user1@example.org")
    text, html = parsed.iter_parts()
    assert text.get_content() == message.text
    assert html.get_content().strip() == message.html


@pytest.mark.parametrize(
    ("text", "html", "content_type"),
    [("Just text\n", None, "text/plain"), (None, "<p>Just HTML</p>", "text/html")],
)
def test_one_part_when_only_one_body_exists(
    smtp_server: SMTPTestServer, text: str | None, html: str | None, content_type: str
) -> None:
    run(send_all(provider_for(smtp_server), outgoing(text=text, html=html)))

    [got] = smtp_server.messages
    assert not got.message.is_multipart()
    assert got.message.get_content_type() == content_type
    assert got.message.get_content().strip() == (text or html or "").strip()


def test_sender_comes_from_the_option_when_the_task_has_none(smtp_server: SMTPTestServer) -> None:
    provider = provider_for(smtp_server, **{"from": "Default <default@example.net>"})
    run(send_all(provider, outgoing(from_addr=None, headers={})))

    [got] = smtp_server.messages
    assert got.mail_from == "default@example.net"
    assert got.message["From"] == "Default <default@example.net>"
    # Without headers from edm.messages, the Message-ID is still derived from the key.
    assert got.message["Message-ID"] == "<key0001@example.net>"


def test_no_sender_at_all_is_a_request_error_before_any_connection(
    smtp_server: SMTPTestServer,
) -> None:
    error = run(send_failing(provider_for(smtp_server), outgoing(from_addr=None)))

    assert isinstance(error, RequestError)
    assert "from" in str(error)
    assert smtp_server.connections == 0


def test_non_ascii_address_uses_smtputf8(smtp_server: SMTPTestServer) -> None:
    run(send_all(provider_for(smtp_server), outgoing(to_email="zoë@exämple.org")))

    [got] = smtp_server.messages
    assert got.rcpt_tos == ["zoë@exämple.org"]
    assert "SMTPUTF8" in got.mail_options
    assert got.message["To"].addresses[0].addr_spec == "zoë@exämple.org"


# -- the connection --------------------------------------------------------------------------------
def test_one_connection_is_reused_even_for_concurrent_sends(smtp_server: SMTPTestServer) -> None:
    provider = provider_for(smtp_server)

    async def scenario() -> list[SendResult]:
        try:
            first = await provider.send(outgoing(1))
            rest = await asyncio.gather(*(provider.send(outgoing(n)) for n in range(2, 7)))
            return [first, *rest]
        finally:
            await provider.close()

    results = run(scenario())

    assert [r.provider_message_id for r in results] == [
        f"<key{n:04d}@example.com>" for n in range(1, 7)
    ]
    assert smtp_server.connections == 1
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"user{n}@example.org" for n in range(1, 7)
    ]
    assert smtp_server.commands[-1] == "QUIT"  # close() says goodbye


def test_connection_is_reopened_after_the_server_dropped_it(smtp_server: SMTPTestServer) -> None:
    provider = provider_for(smtp_server)

    async def scenario() -> None:
        try:
            await provider.send(outgoing(1))
            await asyncio.to_thread(smtp_server.drop_connections)
            await provider.send(outgoing(2))
        finally:
            await provider.close()

    run(scenario())

    assert smtp_server.connections == 2
    assert len(smtp_server.messages) == 2


def test_stale_connection_noticed_at_mail_from_is_replaced(smtp_server: SMTPTestServer) -> None:
    provider = provider_for(smtp_server)

    async def scenario() -> None:
        try:
            await provider.send(outgoing(1))
            smtp_server.drop_command = "MAIL"  # the server vanishes as the next send starts
            await provider.send(outgoing(2))
        finally:
            await provider.close()

    run(scenario())

    assert smtp_server.connections == 2
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [
        "user1@example.org",
        "user2@example.org",
    ]


def test_connection_is_reopened_after_a_failure(smtp_server: SMTPTestServer) -> None:
    smtp_server.reply_rcpt["user1@example.org"] = "550 5.1.1 no such user"
    provider = provider_for(smtp_server)

    async def scenario() -> SendResult:
        try:
            with pytest.raises(RecipientError):
                await provider.send(outgoing(1))
            return await provider.send(outgoing(2))
        finally:
            await provider.close()

    run(scenario())

    assert smtp_server.connections == 2
    assert [m.rcpt_tos for m in smtp_server.messages] == [["user2@example.org"]]


def test_a_cancelled_send_leaves_no_half_used_connection(smtp_server: SMTPTestServer) -> None:
    smtp_server.delay_data_reply = 0.5
    provider = provider_for(smtp_server)

    async def scenario() -> None:
        try:
            with pytest.raises(TimeoutError):  # the worker's own deadline
                await asyncio.wait_for(provider.send(outgoing(1)), timeout=0.2)
            smtp_server.delay_data_reply = 0
            await provider.send(outgoing(2))
        finally:
            await provider.close()

    run(scenario())

    assert smtp_server.connections == 2
    assert "user2@example.org" in [m.rcpt_tos[0] for m in smtp_server.messages]


def test_authenticates_with_the_configured_credentials(smtp_server: SMTPTestServer) -> None:
    smtp_server.credentials = ("mailer", "s3cret pass")
    provider = provider_for(smtp_server, username="mailer", password="s3cret pass")
    run(send_all(provider, outgoing()))

    assert "AUTH" in smtp_server.commands
    assert len(smtp_server.messages) == 1


# -- error classes ---------------------------------------------------------------------------------
def _failure(server: SMTPTestServer, **options: str) -> ProviderError:
    return run(send_failing(provider_for(server, **options), outgoing()))


def test_421_greeting_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.reply_connect = "421 4.3.2 service not available, closing channel"
    error = _failure(smtp_server)
    assert type(error) is TransientError
    assert error.code == "421"
    assert "service not available" in str(error)


def test_421_to_the_next_command_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.reply_command["MAIL"] = "421 4.7.0 too many connections, closing"
    error = _failure(smtp_server)
    assert type(error) is TransientError
    assert error.code == "421"


def test_450_to_rcpt_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.reply_rcpt["user1@example.org"] = "450 4.2.1 mailbox busy, try later"
    error = _failure(smtp_server)
    assert type(error) is TransientError
    assert error.code == "450"
    assert smtp_server.messages == []


@pytest.mark.parametrize("reply", ["550 5.1.1 no such user", "553 5.1.3 bad address syntax"])
def test_5xx_to_rcpt_is_the_recipient(smtp_server: SMTPTestServer, reply: str) -> None:
    smtp_server.reply_rcpt["user1@example.org"] = reply
    error = _failure(smtp_server)
    assert type(error) is RecipientError
    assert error.code == reply[:3]
    assert reply[10:] in str(error)
    assert smtp_server.messages == []


def test_relay_denied_on_rcpt_is_the_service_not_the_recipient(
    smtp_server: SMTPTestServer,
) -> None:
    smtp_server.reply_rcpt["user1@example.org"] = "554 5.7.1 Relay access denied"
    assert type(_failure(smtp_server)) is ServiceError


def test_535_to_auth_is_the_service(smtp_server: SMTPTestServer) -> None:
    smtp_server.credentials = ("mailer", "right")
    error = _failure(smtp_server, username="mailer", password="wrong")
    assert type(error) is ServiceError
    assert error.code == "535"
    assert "bad credentials" in str(error)
    assert "MAIL" not in smtp_server.commands


def test_5xx_to_mail_from_is_the_service(smtp_server: SMTPTestServer) -> None:
    smtp_server.reply_command["MAIL"] = "550 5.7.1 sender not allowed to send from this domain"
    error = _failure(smtp_server)
    assert type(error) is ServiceError
    assert error.code == "550"
    assert "sender not allowed" in str(error)


@pytest.mark.parametrize(
    ("knob", "reply", "expected"),
    [
        ("reply_data_next", "554 5.6.0 content rejected as spam", RequestError),
        ("reply_data_next", "451 4.3.0 try later", TransientError),
        ("reply_command", "554 5.5.1 no valid recipients", RequestError),
        ("reply_command", "452 4.3.1 insufficient storage", TransientError),
    ],
)
def test_replies_to_data(
    smtp_server: SMTPTestServer, knob: str, reply: str, expected: type[ProviderError]
) -> None:
    if knob == "reply_command":
        smtp_server.reply_command["DATA"] = reply  # to the DATA command itself
    else:
        smtp_server.reply_data_next = reply  # to the content
    error = _failure(smtp_server)
    assert type(error) is expected
    assert error.code == reply[:3]
    assert smtp_server.messages == []


def test_connection_lost_before_data_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.drop_command = "DATA"
    error = _failure(smtp_server)
    assert type(error) is TransientError
    assert smtp_server.messages == smtp_server.unanswered == []


def test_connection_lost_after_the_content_was_sent_is_unknown(
    smtp_server: SMTPTestServer,
) -> None:
    smtp_server.drop_after_data = True
    error = _failure(smtp_server)
    assert type(error) is UnknownOutcomeError
    assert len(smtp_server.unanswered) == 1  # the server did get it: a resend would duplicate


def test_timeout_after_the_content_was_sent_is_unknown(smtp_server: SMTPTestServer) -> None:
    smtp_server.delay_data_reply = 1.0
    error = _failure(smtp_server, timeout="0.3")
    assert type(error) is UnknownOutcomeError


def test_connection_refused_is_transient() -> None:
    provider = SMTPProvider("test-smtp", {"host": "127.0.0.1", "port": str(free_port())})
    error = run(send_failing(provider, outgoing()))
    assert type(error) is TransientError


def test_silent_server_is_a_transient_timeout() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        provider = SMTPProvider(
            "test-smtp", {"host": "127.0.0.1", "port": str(port), "timeout": "0.3"}
        )
        error = run(send_failing(provider, outgoing()))
    assert type(error) is TransientError


def test_starttls_required_but_not_offered_is_the_service(smtp_server: SMTPTestServer) -> None:
    error = _failure(smtp_server, security="starttls")
    assert type(error) is ServiceError
    assert "STARTTLS" in str(error)
    assert "MAIL" not in smtp_server.commands  # never falls back to sending in clear


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "host"),
        ({"host": "smtp.example.com", "port": "smtp"}, "port"),
        ({"host": "smtp.example.com", "port": "70000"}, "port"),
        ({"host": "smtp.example.com", "security": "ssl"}, "security"),
        ({"host": "smtp.example.com", "username": "u"}, "password"),
        ({"host": "smtp.example.com", "password": "p"}, "username"),
        ({"host": "smtp.example.com", "timeout": "soon"}, "timeout"),
        ({"host": "smtp.example.com", "timeout": "0"}, "timeout"),
        ({"host": "smtp.example.com", "from": "nobody"}, "from"),
        ({"host": "smtp.example.com", "helo": "my host"}, "helo"),
        ({"host": "smtp.example.com", "hots": "x"}, "hots"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, str], named: str) -> None:
    with pytest.raises(OptionError, match=named):
        make_provider("smtp", "test-smtp", options)


@pytest.mark.parametrize(
    ("security", "port"), [("none", 25), ("starttls", 587), ("tls", 465), (None, 587)]
)
def test_default_port_follows_security(security: str | None, port: int) -> None:
    options = {"host": "smtp.example.com"} | ({"security": security} if security else {})
    provider = SMTPProvider("test-smtp", options)
    assert (provider.port, provider.security) == (port, security or "starttls")
    assert provider.idempotency_window is None
