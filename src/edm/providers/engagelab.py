"""EngageLab Email over its HTTP API: one request per message, `request_id` as the key.

The error codes in EngageLab's answers are not public, so failures are classified by HTTP
status first and, for a 4xx, by whether the message text is about the recipient address.
Code and text are kept in the error so the sub-task's last error shows what EngageLab said.
"""

from __future__ import annotations

import json
import re
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    Provider,
    RecipientError,
    RequestError,
    SendResult,
    ServiceError,
    TransientError,
    UnknownOutcomeError,
)

DEFAULT_BASE_URL = "https://email.api.engagelab.cc"
SEND_PATH = "/v1/mail/send"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_AFTER = 60.0
OPTIONS = frozenset(
    {"api_user", "api_key", "base_url", "from", "timeout", "webhook_key", "webhook_verify"}
)

# Documented limits.
MAX_SUBJECT_CHARS = 256
MAX_HEADERS_BYTES = 1024
MAX_CUSTOM_ARGS_BYTES = 1024
MAX_REQUEST_ID_CHARS = 128

_BAD = (
    r"(?:invalid|illegal|nonexistent|non-existent|not\s+exists?|does\s*n[o']t\s+exist"
    r"|unknown|malformed|incorrect|wrong|bad|unreachable|undeliverable|rejected|blocked"
    r"|blacklisted|suppressed|bounced|unsubscribed)"
)
_WHO = r"(?:recipients?|receivers?|mailbox(?:es)?|(?:e-?mail\s+)?(?<!ip\s)address(?:es)?)"
_RECIPIENT_WORD = re.compile(rf"\b{_WHO}\b", re.IGNORECASE)
_PROBLEM_WORD = re.compile(rf"\b{_BAD}\b", re.IGNORECASE)
_OTHER_PARTY = re.compile(r"\b(?:from|sender|reply[_\s-]?to)\b", re.IGNORECASE)
# `to` is an everyday word: it counts only next to a problem word ("invalid to", "to is illegal").
_TO_FIELD = re.compile(
    rf"(?:\b{_BAD}\W+['\"`]?to\b)|(?:(?:^|[\s'\"`(\[])to['\"`]?\W+"
    rf"(?:(?:is|are|field|param(?:eter)?|address(?:es)?|list|value)\W+)*{_BAD}\b)",
    re.IGNORECASE,
)


def about_recipient(text: str) -> bool:
    """Whether an error text blames the recipient address rather than the request."""
    if _TO_FIELD.search(text):
        return True
    if not (_RECIPIENT_WORD.search(text) and _PROBLEM_WORD.search(text)):
        return False
    # "invalid from address", "sender address illegal": about our side, not the contact.
    return not _OTHER_PARTY.search(text) or bool(re.search(r"\brecipients?\b", text, re.I))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return max(moment.timestamp() - (time.time() if now is None else now), 0.0)


def _json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


class EngageLabProvider(Provider):
    name = "engagelab"
    idempotency_window = 3600.0  # a repeated request_id within one hour returns the earlier result

    def __init__(self, service_name: str, options: dict[str, str]) -> None:
        super().__init__(service_name, options)
        unknown = set(options) - OPTIONS
        if unknown:
            raise OptionError(f"unknown engagelab option(s): {', '.join(sorted(unknown))}")
        for key in ("api_user", "api_key"):
            if not (options.get(key) or "").strip():
                raise OptionError(f"option {key} is required for engagelab")
        self.api_user = options["api_user"].strip()
        self.api_key = options["api_key"].strip()
        self.base_url = self._base_url(options.get("base_url", DEFAULT_BASE_URL))
        self.default_from = options.get("from")
        if self.default_from is not None and not self.default_from.strip():
            raise OptionError("option from must not be empty when given")
        raw_timeout = options.get("timeout", str(DEFAULT_TIMEOUT))
        try:
            self.timeout = float(raw_timeout)
        except ValueError:
            raise OptionError(f"option timeout must be seconds, not {raw_timeout!r}") from None
        if not 0 < self.timeout < float("inf"):
            raise OptionError(f"option timeout must be a positive number, not {raw_timeout!r}")
        # Read by the webhook receiver, not by sending.
        self.webhook_key = options.get("webhook_key") or None
        verify = options.get("webhook_verify", "true").strip().lower()
        if verify not in ("true", "false"):
            raise OptionError(
                f"option webhook_verify must be true or false, not {options['webhook_verify']!r}"
            )
        self.webhook_verify = verify == "true"
        if "webhook_verify" in options and self.webhook_verify and not self.webhook_key:
            raise OptionError(
                "option webhook_verify needs webhook_key: the key that signs EngageLab's webhooks"
            )
        self._client: httpx.AsyncClient | None = None

    @staticmethod
    def _base_url(raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"option base_url must be an http(s) URL, not {raw!r}")
        if parts.query or parts.fragment:
            raise OptionError(f"option base_url must not have a query or fragment: {raw!r}")
        return raw.strip().rstrip("/")

    def _http(self) -> httpx.AsyncClient:
        """One client per provider, so connections are kept alive between messages."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                auth=httpx.BasicAuth(self.api_user, self.api_key),
                headers={"Content-Type": "application/json;charset=utf-8"},
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def request_body(self, message: OutgoingMessage) -> dict:
        """The JSON body for one message, or RequestError if it breaks a documented limit."""
        sender = message.from_addr or self.default_from
        if not sender:
            raise RequestError("engagelab: no sender: the task has no from and the service none")
        if len(message.subject) > MAX_SUBJECT_CHARS:
            raise RequestError(
                f"engagelab: subject is {len(message.subject)} characters, "
                f"the limit is {MAX_SUBJECT_CHARS}"
            )
        content = {k: v for k, v in (("html", message.html), ("text", message.text)) if v}
        if not content:
            raise RequestError("engagelab: the message has neither an HTML nor a text part")
        headers = {k: v for k, v in message.headers.items() if v is not None}
        size = _json_size(headers)
        if size > MAX_HEADERS_BYTES:
            raise RequestError(
                f"engagelab: headers take {size} bytes, the limit is {MAX_HEADERS_BYTES} bytes"
            )
        custom_args = {"edm_subtask": str(message.sub_task_id), "edm_task": str(message.task_id)}
        if _json_size(custom_args) > MAX_CUSTOM_ARGS_BYTES:
            raise RequestError(f"engagelab: custom_args over {MAX_CUSTOM_ARGS_BYTES} bytes")
        if len(message.idempotency_key) > MAX_REQUEST_ID_CHARS:
            raise RequestError(
                f"engagelab: request_id is {len(message.idempotency_key)} characters, "
                f"the limit is {MAX_REQUEST_ID_CHARS}"
            )
        return {
            "from": sender,
            # The bare address: the docs allow `Name<addr>` only for `from`.
            "to": [message.to_email],
            "body": {
                "subject": message.subject,
                "content": content,
                "headers": headers,
                "settings": {"send_mode": 0, "return_email_id": True},
            },
            "custom_args": custom_args,
            "request_id": message.idempotency_key,
        }

    async def send(self, message: OutgoingMessage) -> SendResult:
        body = self.request_body(message)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        url = self.base_url + SEND_PATH
        try:
            response = await self._http().post(url, content=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: safe to send again, here or elsewhere.
            raise TransientError(f"engagelab: cannot connect: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            # Sent, or partly sent, and no usable answer: EngageLab may have accepted it.
            raise UnknownOutcomeError(f"engagelab: no answer: {_describe(exc)}") from None
        return self._result(response)

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        where = f"engagelab: HTTP {status}"
        if 200 <= status < 300:
            email_ids = _email_ids(response)
            if not email_ids:
                raise UnknownOutcomeError(
                    f"{where} without email_ids: the message may have been accepted"
                )
            return SendResult(provider_message_id=email_ids[0])
        code, text = _error_fields(response)
        said = f"{where}: {text}" if text else where
        if status in (401, 403):
            raise ServiceError(said, code=code)
        if status in (404, 405):
            # The endpoint itself is wrong (base_url): every other message would fail too.
            raise ServiceError(f"{said} (check base_url)", code=code)
        if status == 408:
            raise TransientError(said, code=code)
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise TransientError(
                said, code=code, retry_after=DEFAULT_RETRY_AFTER if wait is None else wait
            )
        if status >= 500:
            raise UnknownOutcomeError(
                said,
                code=code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        if 400 <= status < 500:
            if about_recipient(text):
                raise RecipientError(said, code=code)
            raise RequestError(said, code=code)
        # A redirect or other surprise: EngageLab did not take the message at this base_url,
        # and will not for any other message either.
        location = response.headers.get("Location")
        raise ServiceError(
            f"{where}: unexpected answer" + (f" (to {location})" if location else "")
        )


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _email_ids(response: httpx.Response) -> list[str]:
    data = _json(response)
    ids = data.get("email_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not ids or not isinstance(ids[0], str) or not ids[0]:
        return []
    return ids


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """EngageLab's `{"code": ..., "message": ...}`, or the start of whatever else it sent."""
    data = _json(response)
    if isinstance(data, dict) and ("code" in data or "message" in data):
        code = data.get("code")
        return (None if code is None else str(code)), str(data.get("message") or "")
    return None, response.text[:300].strip()
