"""A real SMTP server for the tests, on 127.0.0.1, that can be told what to answer.

Built on aiosmtpd's threaded Controller: the server runs its own event loop in a thread,
so a test can drive the provider with `asyncio.run` in the main thread. Every knob below
is a plain attribute the test sets before sending; one-shot knobs are consumed by the
first command they apply to, so a test can fail one send and watch the next one succeed.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message whose content reached the server."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    mail_options: list[str] = field(default_factory=list)


def _parse(raw: bytes) -> EmailMessage:
    """The message as a receiving mail system reads it (own line ends, UTF-8 headers)."""
    text = raw.replace(b"\r\n", b"\n").decode("utf-8", errors="surrogateescape")
    parsed = email.message_from_string(text, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


class _Session(SMTP):
    """aiosmtpd's SMTP session with the test server's interventions before each command."""

    def __init__(self, owner: SMTPTestServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self._smtp_methods = {
            name: self._intercepted(name, method) for name, method in self._smtp_methods.items()
        }

    async def _handle_client(self) -> None:
        reply = self.owner.reply_connect
        if reply is not None:
            await self.push(reply)
            self._close()
            return
        await super()._handle_client()

    def _intercepted(self, name: str, method: Any) -> Any:
        async def run(arg: str | None) -> None:
            owner = self.owner
            owner._record_command(name)
            if owner._take("drop_command", name):
                self._close()
                return
            reply = owner._take_reply(name)
            if reply is not None:
                await self.push(reply)
                if reply.startswith("421"):
                    self._close()
                return
            await method(arg)

        return run

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Handler:
    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.owner.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.owner.reply_rcpt.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        raw = bytes(envelope.original_content or b"")
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            raw=raw,
            message=_parse(raw),
            mail_options=list(envelope.mail_options),
        )
        if owner.delay_data_reply:
            await asyncio.sleep(owner.delay_data_reply)
        if owner._take("drop_after_data", True):
            owner._keep(owner._unanswered, received)
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()  # cancelled when the connection is gone
        reply = owner._take_reply("DATA content")
        if reply is not None:
            return reply
        owner._keep(owner._messages, received)
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    def __init__(self, owner: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname=HOST, port=0, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        session = _Session(self.owner, self.handler, **self.SMTP_kwargs)
        self.owner._connected(session)
        return session

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before aiosmtpd's own first connection.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SMTPTestServer:
    """A loopback SMTP server recording what it receives.

    Knobs (set them from the test):
      reply_connect        answered instead of the 220 greeting, then the connection is closed
      reply_command[NAME]  one-shot answer to the next NAME command ("EHLO", "MAIL", "DATA"...)
                           instead of the normal one; a 421 also closes the connection
      reply_next_command   one-shot answer to the next command of any kind
      reply_rcpt[address]  answer to every RCPT TO for that address
      reply_data_next      one-shot answer after the next message content (instead of 250)
      drop_command         one-shot: close without answering when this command arrives
      drop_after_data      one-shot: close after the next message content, without answering
      delay_data_reply     seconds to wait before answering a message content
      credentials          (user, password): require AUTH; anything else gets 535
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._unanswered: list[Received] = []
        self._commands: list[str] = []
        self._sessions: list[_Session] = []
        self.connections = 0
        self.reply_connect: str | None = None
        self.reply_command: dict[str, str] = {}
        self.reply_next_command: str | None = None
        self.reply_rcpt: dict[str, str] = {}
        self.reply_data_next: str | None = None
        self.drop_command: str | None = None
        self.drop_after_data = False
        self.delay_data_reply = 0.0
        self.credentials: tuple[str, str] | None = None
        self._controller = _Controller(
            self,
            server_hostname="smtp.test",
            authenticator=self._authenticate,
            auth_require_tls=False,
            ready_timeout=5.0,
        )

    # -- life -------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> None:
        self._controller.start()
        with self._lock:  # forget aiosmtpd's own start-up probe
            self.connections = 0
            self._sessions.clear()
            self._commands.clear()

    def stop(self) -> None:
        self._controller.stop()

    def drop_connections(self) -> None:
        """Close every open connection from the server's side, as an idle timeout would."""

        async def close_all() -> None:
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:
                if session.transport is not None:
                    session.transport.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(5)

    # -- what happened --------------------------------------------------------------------------
    @property
    def messages(self) -> list[Received]:
        """Messages accepted with a 250."""
        with self._lock:
            return list(self._messages)

    @property
    def unanswered(self) -> list[Received]:
        """Messages whose content arrived but whose connection was dropped before any answer."""
        with self._lock:
            return list(self._unanswered)

    @property
    def commands(self) -> list[str]:
        """Every command received, in order, across all connections."""
        with self._lock:
            return list(self._commands)

    # -- used by the session, in the server's thread ----------------------------------------------
    def _connected(self, session: _Session) -> None:
        with self._lock:
            self.connections += 1
            self._sessions.append(session)

    def _record_command(self, name: str) -> None:
        with self._lock:
            self._commands.append(name)

    def _keep(self, where: list[Received], received: Received) -> None:
        with self._lock:
            where.append(received)

    def _take(self, knob: str, value: object) -> bool:
        with self._lock:
            if getattr(self, knob) == value:
                setattr(self, knob, None if isinstance(value, str) else False)
                return True
            return False

    def _take_reply(self, name: str) -> str | None:
        with self._lock:
            if name == "DATA content":
                reply, self.reply_data_next = self.reply_data_next, None
                return reply
            reply = self.reply_command.pop(name, None)
            if reply is None:
                reply, self.reply_next_command = self.reply_next_command, None
            return reply

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        expected = self.credentials
        if (
            expected is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == expected
        ):
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False, message="535 5.7.8 bad credentials")


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    server = SMTPTestServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
