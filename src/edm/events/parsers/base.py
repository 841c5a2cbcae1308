"""What every webhook parser gives the event pipeline.

A parser turns one decoded JSON body into normalised events and knows nothing of the
database: matching and applying are the pipeline's. Adding a provider is one module here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Our normalised event names. `ignored` is kept in the log but changes nothing (EngageLab's
# `route`: an inbound reply, not a tracking fact).
EVENT_TYPES = (
    "accepted",
    "delivered",
    "opened",
    "clicked",
    "soft_bounce",
    "hard_bounce",
    "complained",
    "unsubscribed",
)
IGNORED = "ignored"


class WebhookParseError(ValueError):
    """The body is JSON of the wrong shape; the message names the field and the problem."""


@dataclass(frozen=True)
class ParsedEvent:
    event: str  # one of EVENT_TYPES, or IGNORED
    occurred_at: float  # epoch seconds, as the provider tells it
    dedupe_key: str  # the provider's event id, or `derived_key(...)`
    # Identifiers, in the order matching tries them; any may be missing.
    sub_task_id: int | None = None
    provider_message_id: str | None = None  # EngageLab `email_id`
    message_id: str | None = None  # our Message-ID, `<key@domain>`
    task_id: int | None = None
    recipient: str | None = None
    # Anything else worth keeping: bounce_type, reason, url, the provider's raw event name.
    data: dict[str, Any] = field(default_factory=dict)


class WebhookParser(Protocol):
    provider: str

    def parse(self, body: Any) -> list[ParsedEvent]:
        """Every event of one request body (already decoded from JSON).

        Raises WebhookParseError when the body as a whole has the wrong shape. An event
        inside it with an unknown name is returned as IGNORED with its name in `data`,
        so a provider adding events never makes us refuse a request.
        """
        ...


def derived_key(provider: str, message: str | None, event: str, occurred_at: float) -> str:
    """A de-duplication key for providers that send no event id: the same fact sent twice
    carries the same message, event and time."""
    raw = f"{provider}\x1f{message or ''}\x1f{event}\x1f{occurred_at!r}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _refuse_constant(name: str) -> Any:
    raise WebhookParseError(f"the body holds {name}, which JSON does not allow")


def decode_json(body: str | bytes) -> Any:
    """A request body as JSON, strictly: Python's decoder would accept NaN and Infinity,
    which no database's JSON column takes."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise WebhookParseError("the body is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, WebhookParseError):
            raise
        raise WebhookParseError(f"the body is not JSON: {exc}") from None


def parse_each(body: Any, parse_one: Callable[[Any], list[ParsedEvent]]) -> list[ParsedEvent]:
    """An event object or an array of them, each element parsed by `parse_one`. One bad
    element refuses the whole body, named by its index: the request is kept raw in the
    event log, so nothing is lost, and a half-applied body would be harder to resend."""
    if isinstance(body, dict):
        items: list[Any] = [body]
    elif isinstance(body, list):
        items = body
    else:
        raise WebhookParseError(
            f"body must be an event object or an array of them, not {json_kind(body)}"
        )
    events: list[ParsedEvent] = []
    for index, item in enumerate(items):
        try:
            events.extend(parse_one(item))
        except WebhookParseError as exc:
            raise WebhookParseError(f"event {index}: {exc}") from None
    return events


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    return _KINDS.get(type(value), "a number" if isinstance(value, int | float) else "a value")
