"""EngageLab Email webhooks: delivery statuses and recipient actions.

EngageLab sends no event id and documents only part of its payload, so this parser is
strict about the few fields everything depends on (an envelope, a time) and tolerant of
the rest: unknown fields are skipped, unknown event names come back as IGNORED, and a
bounce reason or click URL is looked for under several plausible names.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edm.events.parsers.base import (
    IGNORED,
    ParsedEvent,
    WebhookParseError,
    derived_key,
    json_kind,
    parse_each,
)

# `message_status` of the `status` envelope.
STATUS_EVENTS = {
    "target": "accepted",
    "sent": "accepted",
    "delivered": "delivered",
    "soft_bounce": "soft_bounce",
    "invalid_email": "hard_bounce",
}
# `event` of the `response` envelope. `route` is an inbound reply, not a tracking fact.
RESPONSE_EVENTS = {
    "open": "opened",
    "click": "clicked",
    "unsubscribe": "unsubscribed",
    "report_spam": "complained",
}
BOUNCE_TYPES = {"hard_bounce": "hard", "soft_bounce": "soft"}

# Where a bounce reason or a click's URL may be: the field names are not documented.
REASON_KEYS = (
    "reason",
    "bounce_reason",
    "error",
    "error_msg",
    "err_msg",
    "msg",
    "message",
    "description",
    "detail",
    "smtp_response",
)
URL_KEYS = ("url", "link", "click_url", "href")
MAX_ADDRESS = 320  # the longest valid email address; a longer `to` is not one
MAX_TEXT = 1000  # a reason or URL longer than this is cut: the raw body is in the log anyway

# `itime` is milliseconds; a value below this is taken as seconds (10**11 ms is March 1973,
# 10**11 s is the year 5138), so a provider or a test sending seconds is still read right.
SECONDS_BELOW = 10**11
MAX_EPOCH = 253402300799  # 9999-12-31: later times cannot become datetimes
MAX_ID = 2**63 - 1  # our ids are 64-bit; anything larger cannot be ours
_DIGITS = re.compile(r"[0-9]{1,19}")


class EngageLabParser:
    provider = "engagelab"

    def parse(self, body: Any) -> list[ParsedEvent]:
        """Every event of one request (one malformed element refuses it whole)."""
        return parse_each(body, _parse_one)


def _parse_one(item: Any) -> list[ParsedEvent]:
    if not isinstance(item, dict):
        raise WebhookParseError(f"must be an object, not {json_kind(item)}")
    occurred_at = _occurred_at(item.get("itime"))
    args = _custom_args(item.get("custom_args"))
    common = {
        "sub_task_id": _our_id(args.get("edm_subtask")),
        "task_id": _our_id(args.get("edm_task")),
    }
    request_id = _text(item.get("message_id"))
    to = _recipient(item.get("to"))

    has_status, has_response = "status" in item, "response" in item
    if has_status and has_response:
        raise WebhookParseError("has both `status` and `response`; expected one")
    if has_status:
        envelope = _object(item["status"], "status")
        name = _name(envelope, "message_status", "status")
        details = _object(envelope.get("status_data", {}), "status.status_data")
        event = STATUS_EVENTS.get(name, IGNORED)
    elif has_response:
        envelope = _object(item["response"], "response")
        name = _name(envelope, "event", "response")
        details = _object(envelope.get("response_data", {}), "response.response_data")
        event = RESPONSE_EVENTS.get(name, IGNORED)
    else:
        raise WebhookParseError("has neither `status` nor `response`")

    data: dict[str, Any] = {"provider_event": name}
    if event in BOUNCE_TYPES:
        data["bounce_type"] = BOUNCE_TYPES[event]
        if name == "invalid_email":
            data["address_invalid"] = True  # the address does not exist
        reason = _first(details, REASON_KEYS)
        if reason is not None:
            data["reason"] = reason
    elif event == "clicked":
        url = _first(details, URL_KEYS)
        if url is not None:
            data["url"] = url

    if name == "target":
        pairs = _targets(details, details.get("tos", item.get("tos")), to)
    else:
        pairs = [(_text(details.get("email_id")), to)]
    return [
        ParsedEvent(
            event=event,
            occurred_at=occurred_at,
            dedupe_key=derived_key(
                "engagelab", _message(email_id, request_id, rcpt), name, occurred_at
            ),
            provider_message_id=email_id,
            recipient=rcpt,
            data=dict(data),
            **common,
        )
        for email_id, rcpt in pairs
    ]


def _targets(
    details: dict[str, Any], tos: Any, to: str | None
) -> list[tuple[str | None, str | None]]:
    """`target` names every recipient of the request: one (email_id, to) pair each.

    `email_ids` and `tos` are parallel lists (`tos` in `status_data`, or beside it). A
    single email_id without a `tos` entry takes the request's `to`; a `target` without
    `email_ids` falls back to `email_id`."""
    ids = details.get("email_ids")
    if not isinstance(ids, list) or not ids:
        return [(_text(details.get("email_id")), to)]
    tos = tos if isinstance(tos, list) else []
    pairs = []
    for i, email_id in enumerate(ids):
        rcpt = _recipient(tos[i]) if i < len(tos) else None
        pairs.append((_text(email_id), rcpt or (to if len(ids) == 1 else None)))
    return pairs


def _message(email_id: str | None, request_id: str | None, recipient: str | None) -> str | None:
    """What the de-duplication key is built on: the per-recipient email_id, or else the
    request's message id with the recipient, so two recipients' facts never collapse."""
    if email_id:
        return email_id
    if request_id and recipient:
        return f"{request_id}${recipient}"
    return request_id or recipient


def _occurred_at(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise WebhookParseError(f"`itime` must be a number, not {value!r:.50}") from None
    if value is None:
        raise WebhookParseError("`itime` is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WebhookParseError(f"`itime` must be a number, not {json_kind(value)}")
    if not ((isinstance(value, int) or math.isfinite(value)) and 0 <= value <= MAX_EPOCH * 1000):
        raise WebhookParseError(f"`itime` is out of range: {value!r:.50}")
    return float(value) if value < SECONDS_BELOW else value / 1000


def _custom_args(value: Any) -> dict[str, Any]:
    """What we sent as `custom_args`: an object, or the same as a JSON string. Anything else
    is tolerated as empty: matching falls back to the email_id."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _our_id(value: Any) -> int | None:
    """One of our ids echoed back; a foreign or mangled value is not an error, just absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value.strip()):
            return None
        value = int(value)
    if isinstance(value, int) and 0 < value <= MAX_ID:
        return value
    return None


def _recipient(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if 0 < len(value) <= MAX_ADDRESS else None


def _text(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value.strip()[:MAX_TEXT] or None


def _first(details: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first non-empty value under any of `keys`, compared without case."""
    lowered = {str(k).lower(): v for k, v in details.items()}
    for key in keys:
        value = lowered.get(key)
        if value is None or value == "" or isinstance(value, dict | list):
            continue
        return str(value)[:MAX_TEXT]
    return None


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookParseError(f"`{field}` must be an object, not {json_kind(value)}")
    return value


def _name(envelope: dict[str, Any], key: str, field: str) -> str:
    value = envelope.get(key)
    if not isinstance(value, str) or not value.strip():
        raise WebhookParseError(f"`{field}.{key}` must be a non-empty string")
    return value.strip()[:100]
