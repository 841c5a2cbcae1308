"""Our own webhook format, for any sender that can post JSON (see docs/webhooks.md).

Unlike a provider's format, this one is ours to define, so it is checked strictly: an
unknown event name or field is refused with a message naming it, so a sender's typo shows
up at once instead of as events that silently match nothing.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Any

from edm.events.parsers.base import (
    EVENT_TYPES,
    ParsedEvent,
    WebhookParseError,
    derived_key,
    parse_each,
)

FIELDS = frozenset(
    {
        "event",
        "subtask_id",
        "message_id",
        "provider_message_id",
        "recipient",
        "task_id",
        "timestamp",
        "event_id",
        "data",
    }
)
BOUNCE_EVENTS = {"hard": "hard_bounce", "soft": "soft_bounce"}
MAX_TEXT = 1000  # ids and event ids; longer values are refused, not cut
MAX_ADDRESS = 320  # the longest valid email address, and the event log's column
MAX_KEY = 200  # the event log's dedupe_key column
MAX_EPOCH = 253402300799  # 9999-12-31: later times cannot become datetimes
# Epoch seconds reach this in the year 5138; a larger number is almost surely milliseconds.
MAX_SECONDS = 10**11
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")  # a 64-bit id has at most 19 digits
EVENT_ID_PREFIX = "id:"  # derived keys are hex digests, so they never start with this


class GenericParser:
    provider = "generic"

    def parse(self, body: Any) -> list[ParsedEvent]:
        """Every event of one request (one bad event refuses it whole)."""
        return parse_each(body, lambda item: [_parse_one(item)])


def _parse_one(item: Any) -> ParsedEvent:
    if not isinstance(item, dict):
        raise WebhookParseError("must be an object")
    unknown = sorted(str(k) for k in item if k not in FIELDS)
    if unknown:
        raise WebhookParseError(f"{unknown[0][:50]}: unknown field")

    raw_data = item.get("data")
    if raw_data is not None and not isinstance(raw_data, dict):
        raise WebhookParseError("data: must be an object")
    data = dict(raw_data or {})
    event = _event(item.get("event"), data)
    occurred_at = _timestamp(item.get("timestamp"))
    sub_task_id = _id(item, "subtask_id")
    task_id = _id(item, "task_id")
    message_id = _message_id(_text(item.get("message_id"), "message_id"))
    provider_message_id = _text(item.get("provider_message_id"), "provider_message_id")
    recipient = _recipient(_text(item.get("recipient"), "recipient"))
    if not (sub_task_id or message_id or provider_message_id or recipient):
        raise WebhookParseError(
            "one of subtask_id, message_id, provider_message_id or recipient is required"
        )

    event_id = item.get("event_id")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    event_id = _text(event_id, "event_id")
    if event_id:
        dedupe_key = _event_id_key(event_id)
    else:
        who = "\x1e".join(
            str(part or "")
            for part in (sub_task_id, provider_message_id, message_id, task_id, recipient)
        )
        dedupe_key = derived_key("generic", who, event, occurred_at)
    return ParsedEvent(
        event=event,
        occurred_at=occurred_at,
        dedupe_key=dedupe_key,
        sub_task_id=sub_task_id,
        provider_message_id=provider_message_id,
        message_id=message_id,
        task_id=task_id,
        recipient=recipient,
        data=data,
    )


def _event(value: Any, data: dict[str, Any]) -> str:
    """The normalised event name; `bounce` is resolved by `data.bounce_type`, which is also
    set (and checked) for `hard_bounce` and `soft_bounce` so every bounce carries it."""
    if not isinstance(value, str):
        raise WebhookParseError("event: required, a string")
    bounce_type = data.get("bounce_type")
    if value == "bounce":
        if not isinstance(bounce_type, str) or bounce_type not in BOUNCE_EVENTS:
            raise WebhookParseError(
                f"data.bounce_type: must be 'hard' or 'soft' for a bounce, not {bounce_type!r:.50}"
            )
        return BOUNCE_EVENTS[bounce_type]
    if value not in EVENT_TYPES:
        raise WebhookParseError(f"event: unknown event {value!r:.50}")
    for kind, event in BOUNCE_EVENTS.items():
        if value == event:
            if bounce_type not in (None, kind):
                raise WebhookParseError(
                    f"data.bounce_type: {bounce_type!r:.50} contradicts event {value!r}"
                )
            data["bounce_type"] = kind
    return value


def _timestamp(value: Any) -> float:
    """Epoch seconds, or an ISO 8601 string; a string without a zone is UTC."""
    if value is None:
        raise WebhookParseError("timestamp: required")
    if isinstance(value, str):
        if len(value) > 64:
            raise WebhookParseError("timestamp: too long for an ISO 8601 time")
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise WebhookParseError(
                f"timestamp: not an ISO 8601 time or epoch seconds: {value!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            seconds = moment.timestamp()
        except (OverflowError, ValueError, OSError):
            raise WebhookParseError(f"timestamp: out of range: {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not (isinstance(value, int) or math.isfinite(value)) or value < 0:
            raise WebhookParseError(f"timestamp: out of range: {value!r:.50}")
        if value >= MAX_SECONDS:
            raise WebhookParseError(
                f"timestamp: {value!r:.50} is too large for epoch seconds (milliseconds?)"
            )
        seconds = float(value)
    else:
        raise WebhookParseError("timestamp: must be epoch seconds or an ISO 8601 string")
    if not 0 <= seconds <= MAX_EPOCH:
        raise WebhookParseError(f"timestamp: out of range: {value!r}")
    return seconds


def _id(item: dict[str, Any], field: str) -> int | None:
    """One of our ids: a positive integer, or a string of digits."""
    value = item.get(field)
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise WebhookParseError(f"{field}: must be a positive integer id, not {value!r:.50}")
    return value


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookParseError(f"{field}: must be a string")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise WebhookParseError(f"{field}: longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise WebhookParseError(f"{field}: must not contain NUL characters")
    return value or None


def _event_id_key(event_id: str) -> str:
    """The sender's own id as the key, hashed when it would not fit the key column."""
    if len(EVENT_ID_PREFIX) + len(event_id) <= MAX_KEY:
        return EVENT_ID_PREFIX + event_id
    return EVENT_ID_PREFIX + "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _message_id(value: str | None) -> str | None:
    """Our Message-ID is stored as `<key@domain>`; accept it with or without the brackets."""
    if value is None:
        return None
    return value if value.startswith("<") and value.endswith(">") else f"<{value.strip('<>')}>"


def _recipient(value: str | None) -> str | None:
    if value is None:
        return None
    if "@" not in value or len(value) > MAX_ADDRESS:
        raise WebhookParseError(f"recipient: not an email address: {value!r:.50}")
    return value.lower()
