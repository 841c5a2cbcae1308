"""Sending through an SMTP server: a local relay, a mailbox provider's submission port, ...

An SMTP server cannot recognise a repeated message, so the one failure that must never be
retried blindly is a connection lost after the message content left. The transaction is
therefore run step by step (MAIL FROM, RCPT TO, DATA, content) and every failure is
classified by the step it happened in:

  - before the content was sent: 4xx, timeouts and lost connections are transient;
  - 5xx to RCPT TO: the recipient; 5xx to DATA or to the content: the message itself;
  - 5xx to the greeting, EHLO, AUTH or MAIL FROM: the account or its configuration;
  - a lost connection or a timeout after the content was sent: unknown outcome.

One connection per provider instance (one per worker) is opened lazily, reused while it
works and dropped after any failure, so that the next send starts from a known state.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import math
import re
import ssl
from datetime import UTC, datetime
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from edm.messages import message_id
from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    Provider,
    ProviderError,
    RecipientError,
    RequestError,
    SendResult,
    ServiceError,
    TransientError,
    UnknownOutcomeError,
)

OPTIONS = frozenset({"host", "port", "username", "password", "security", "from", "timeout", "helo"})
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}

# Bodies are encoded to 7 bit (quoted-printable or base64) so that any server takes them,
# with or without 8BITMIME.
POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Headers set with `set_raw` (the tracking headers) are written as given: the default policy
# would re-fold a long List-Unsubscribe URL into RFC 2047 encoded words, which mail clients
# do not decode in that header.
WIRE_POLICY = POLICY.clone(refold_source="none")

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BAD_HOSTNAME = re.compile(r"[\s\x00-\x1f\x7f<>\[\]]")
_BAD_ADDRESS = re.compile(r'[\s\x00-\x1f\x7f<>"]')


class SMTPProvider(Provider):
    """Options: host (required), port, username + password, security, from, timeout, helo.

    `security` defaults to `starttls`, and it is required, not opportunistic: credentials and
    contacts' data never cross the network in clear because a server forgot to offer TLS,
    and certificates are always verified. A relay on the same machine or network that has no
    TLS must be configured explicitly with `security=none`.
    """

    name = "smtp"
    idempotency_window = None
    max_concurrent_sends = 1  # one connection, one transaction at a time

    def __init__(self, service_name: str, options: dict[str, str]) -> None:
        super().__init__(service_name, options)
        unknown = set(options) - OPTIONS
        if unknown:
            raise OptionError(f"unknown smtp option(s): {', '.join(sorted(unknown))}")
        opts = {key: str(value).strip() for key, value in options.items()}

        self.host = opts.get("host", "")
        if not self.host:
            raise OptionError("option host is required (the SMTP server's name or address)")
        if _BAD_HOSTNAME.search(self.host):
            raise OptionError(f"option host is not a host name: {self.host!r}")

        self.security = opts.get("security") or "starttls"
        if self.security not in DEFAULT_PORTS:
            raise OptionError(
                f"option security must be none, starttls or tls, not {self.security!r}"
            )

        raw_port = opts.get("port") or str(DEFAULT_PORTS[self.security])
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
            raise OptionError(f"option port must be a number from 1 to 65535, not {raw_port!r}")
        self.port = int(raw_port)

        self.username = opts.get("username") or None
        self.password = options.get("password") or None  # not stripped: spaces may be real
        if (self.username is None) != (self.password is None):
            raise OptionError("options username and password must be given together")

        self.default_from = opts.get("from") or None
        if self.default_from is not None and not _address_of(self.default_from):
            raise OptionError(f"option from is not an email address: {self.default_from!r}")

        # Below the worker's own limit (0.8 x the 30 s lease), so a hung server reads as what it
        # is (transient before the content, unknown after) rather than as the worker's timeout.
        raw_timeout = opts.get("timeout") or "15"
        try:
            self.timeout = float(raw_timeout)
        except ValueError:
            raise OptionError(f"option timeout must be seconds, not {raw_timeout!r}") from None
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise OptionError(f"option timeout must be a positive number, not {raw_timeout!r}")

        self.helo = opts.get("helo") or None
        if self.helo is not None and (not self.helo.isascii() or _BAD_HOSTNAME.search(self.helo)):
            raise OptionError(f"option helo must be an ASCII host name, not {self.helo!r}")

        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()  # the worker sends a group at once: one transaction at a time

    # -- the Provider interface --------------------------------------------------------------------
    async def send(self, message: OutgoingMessage) -> SendResult:
        payload, sender, msg_id, utf8 = self._build(message)
        async with self._lock:
            try:
                await self._transact(sender, message.to_email, payload, utf8)
            except BaseException:
                # Whatever failed (including a cancelled call), the session's state is unknown.
                self._discard()
                raise
        return SendResult(provider_message_id=msg_id)

    async def close(self) -> None:
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is None:
                return
            with contextlib.suppress(Exception):
                if smtp.is_connected:
                    await smtp.quit(timeout=min(self.timeout, 5.0))
            smtp.close()

    # -- the message -------------------------------------------------------------------------------
    def _build(self, message: OutgoingMessage) -> tuple[bytes, str, str, bool]:
        """The message as it goes on the wire, the envelope sender, the Message-ID, SMTPUTF8."""
        from_header = message.from_addr or self.default_from
        if not from_header:
            raise RequestError("smtp: no sender: the task has no from address and no from option")
        sender = _address_of(from_header)
        if not sender:
            raise RequestError(f"smtp: the sender is not an email address: {from_header!r}")
        utf8 = not (sender.isascii() and message.to_email.isascii())

        given = {name.lower(): (name, value) for name, value in message.headers.items()}
        msg_id = given["message-id"][1] if "message-id" in given else None
        msg_id = msg_id or message_id(message.idempotency_key, from_header)

        to = _recipient(message.to_email)
        msg = EmailMessage(policy=POLICY)
        try:
            msg["To"] = Address(
                display_name=message.to_name or "", username=to.username, domain=to.domain
            )
            msg["From"] = from_header
            msg["Subject"] = message.subject
            msg["Date"] = format_datetime(datetime.now(UTC))
            if "message-id" not in given:
                msg.set_raw("Message-ID", msg_id)
            for name, value in given.values():
                if "\r" in value or "\n" in value:
                    raise ValueError(f"header {name} contains a line break")
                if name.lower() in ("from", "to", "subject", "date"):
                    del msg[name]
                if value.isascii():
                    msg.set_raw(name, value)
                else:
                    msg[name] = value
            if message.text is not None or message.html is None:
                msg.set_content(message.text or "")
                if message.html is not None:
                    msg.add_alternative(message.html, subtype="html")
            else:
                msg.set_content(message.html, subtype="html")
            data = msg.as_bytes(policy=WIRE_POLICY.clone(utf8=utf8))
        except (ValueError, TypeError, MessageError) as exc:
            raise RequestError(f"smtp: cannot build the message: {exc}") from exc
        return data, sender, msg_id, utf8

    # -- the transaction ---------------------------------------------------------------------------
    async def _transact(self, sender: str, recipient: str, payload: bytes, utf8: bool) -> None:
        smtp = await self._mail_from(sender, utf8)

        phase = "rcpt"
        try:
            await smtp.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
            phase = "data"
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                raise SMTPResponseException(reply.code, reply.message)
            protocol = smtp.protocol
            if protocol is None:
                raise SMTPServerDisconnected("connection lost before the content was sent")
            protocol.write(_data_lines(payload))
            # From here on the server may have the message.
            phase = "content"
            reply = await protocol.read_response(timeout=self.timeout)
        except Exception as exc:
            raise _classify(phase, exc) from exc
        if reply.code != 250:
            raise _classify(phase, SMTPResponseException(reply.code, reply.message))

    async def _mail_from(self, sender: str, utf8: bool) -> aiosmtplib.SMTP:
        """MAIL FROM on the open connection, or on a new one.

        A connection that the server closed while idle is only noticed when it is used: a
        reused one that is lost at MAIL FROM (nothing sent yet) is replaced once.
        """
        for attempt in (1, 2):
            smtp = self._smtp
            reused = smtp is not None and smtp.is_connected
            if smtp is None or not reused:
                smtp = await self._open()
            if utf8 and not smtp.supports_extension("smtputf8"):
                raise RequestError(
                    "smtp: the address is not ASCII and the server does not offer SMTPUTF8"
                )
            try:
                if utf8:
                    await smtp.mail(sender, options=["SMTPUTF8"], encoding="utf-8")
                else:
                    await smtp.mail(sender)
                return smtp
            except ConnectionError as exc:  # SMTPServerDisconnected included
                self._discard()
                if not reused or attempt == 2:
                    raise _classify("mail", exc) from exc
            except Exception as exc:
                raise _classify("mail", exc) from exc
        raise AssertionError("unreachable")

    async def _open(self) -> aiosmtplib.SMTP:
        self._discard()
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.helo,
            timeout=self.timeout,
            use_tls=self.security == "tls",
            start_tls=False,
            validate_certs=True,
        )
        phase = "connect"
        try:
            await smtp.connect()
            phase = "hello"
            await self._hello(smtp)
            if self.security == "starttls":
                await smtp.starttls()
                await self._hello(smtp)
            if self.username is not None and self.password is not None:
                phase = "auth"
                await smtp.login(self.username, self.password)
        except BaseException as exc:
            smtp.close()
            if isinstance(exc, Exception):
                raise _classify(phase, exc) from exc
            raise
        self._smtp = smtp
        return smtp

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except SMTPHeloError:
            if not smtp.is_connected:
                raise
            await smtp.helo()

    def _discard(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()


def _address_of(value: str) -> str:
    """The bare address in `Name <a@b>` or `a@b`, or "" when there is none."""
    address = parseaddr(value)[1]
    return address if "@" in address else ""


def _recipient(address: str) -> Address:
    """The recipient's address, checked; RecipientError if it cannot be one.

    An ASCII address goes through the email package's full RFC 5322 parser; that parser
    rejects non-ASCII local parts, which SMTPUTF8 allows, so those are only checked for
    what would break the SMTP command line.
    """
    try:
        if address.isascii():
            return Address(addr_spec=address)
        local, at, domain = address.rpartition("@")
        if not (at and local and domain) or _BAD_ADDRESS.search(address):
            raise ValueError("not an address")
        return Address(username=local, domain=domain)
    except (ValueError, IndexError, MessageError) as exc:
        raise RecipientError(f"smtp: invalid recipient address {address!r}: {exc}") from exc


def _data_lines(payload: bytes) -> bytes:
    """The content as DATA sends it: CRLF line ends, leading dots doubled, the final dot."""
    data = _LINE_ENDINGS.sub(b"\r\n", payload)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


def _classify(phase: str, exc: BaseException) -> ProviderError:
    """The scheduler's meaning of a failure in one phase of the SMTP conversation.

    Phases: connect (TCP, TLS, greeting), hello (EHLO, STARTTLS), auth, mail, rcpt,
    data (the DATA command), content (after the message content was sent).
    """
    if isinstance(exc, ProviderError):
        return exc
    where = {
        "connect": "connecting",
        "hello": "greeting the server",
        "auth": "authenticating",
        "mail": "MAIL FROM",
        "rcpt": "RCPT TO",
        "data": "DATA",
        "content": "after the message content was sent",
    }[phase]
    if isinstance(exc, SMTPResponseException) and 400 <= exc.code < 600:
        code, text = str(exc.code), " ".join(exc.message.split())
        reason = f"smtp: {code} {text} ({where})"
        if exc.code < 500:
            return TransientError(reason, code=code)
        if phase == "rcpt":
            if _RELAY_DENIED.search(text):
                # Our relay refuses to relay for us: every recipient would fail alike.
                return ServiceError(reason, code=code)
            return RecipientError(reason, code=code)
        if phase in ("data", "content"):
            return RequestError(reason, code=code)
        return ServiceError(reason, code=code)
    if phase == "content":
        # Lost, timed out or garbled after the content left: the server may have accepted it.
        return UnknownOutcomeError(f"smtp: no final answer {where}: {_describe(exc)}")
    if _certificate_error(exc):
        return ServiceError(f"smtp: TLS certificate refused ({where}): {_describe(exc)}")
    if isinstance(exc, SMTPServerDisconnected | SMTPTimeoutError | OSError):
        return TransientError(f"smtp: {_describe(exc)} ({where})")
    if isinstance(exc, SMTPResponseException):
        return TransientError(
            f"smtp: unexpected answer {exc.code} {_describe(exc)} ({where})", code=str(exc.code)
        )
    if isinstance(exc, ValueError) and phase == "rcpt":
        return RecipientError(f"smtp: invalid recipient address: {exc}")
    if isinstance(exc, SMTPException | ValueError):
        # The server lacks what the options ask for (STARTTLS, AUTH), or a bad sender.
        kind = RequestError if phase == "mail" else ServiceError
        return kind(f"smtp: {_describe(exc)} ({where})")
    return TransientError(f"smtp: {_describe(exc)} ({where})")


_RELAY_DENIED = re.compile(
    r"relay(ing)? (access )?(denied|not permitted|prohibited)|"
    r"not permitted to relay|unable to relay",
    re.IGNORECASE,
)


def _certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
