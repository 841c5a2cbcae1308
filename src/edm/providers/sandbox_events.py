"""The sandbox's simulated tracking events, posted back to a webhook like a real provider's.

A real provider tells us what became of a message later, out of order, sometimes twice and
sometimes several events in one request; the sandbox does the same, so the whole loop
(send → webhook → event log → facts) can be run and tested without a real provider.

Rates, all from 0 to 1:
- `delivered`, `hard_bounce`, `soft_bounce` are shares of accepted messages and exclude each
  other (a message has one fate), so together they may not exceed 1. Without `delivered`,
  every message that does not bounce is delivered. The rest of the messages get no event.
- `open`, `click`, `complaint`, `unsubscribe` are shares of delivered messages. A click
  implies an open: one roll decides both, so the clicked messages are a subset of the
  opened ones and the open share is at least the click share.

Posting is best effort: the sandbox is a simulated provider, not part of the engine's
guarantee, so a post that keeps failing is dropped with a warning and never slows down or
fails a send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from edm.providers.base import OptionError, OutgoingMessage

log = logging.getLogger(__name__)

# Option name → the generic webhook event it is posted as (see docs/webhooks.md).
GENERIC_EVENTS = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "hard_bounce": "bounce",
    "soft_bounce": "bounce",
    "complaint": "complained",
    "unsubscribe": "unsubscribed",
}
# A real provider reports a little after accepting, not at once.
MIN_DELAY = 0.05
MAX_DELAY = 0.5
# How often one event of a message is posted twice (same event_id), and how often an event
# shares a request with the one before it (a JSON list body).
DUPLICATE_RATE = 0.1
BATCH_RATE = 0.3
# Waits between tries of a failed post; a post is tried len + 1 times, then dropped.
RETRY_DELAYS = (0.1, 0.4, 1.0)
POST_TIMEOUT = 5.0
# How long close() lets pending posts finish, so a worker that exits when idle still
# reports its last messages.
CLOSE_GRACE = 2.0
# Posts waiting at once; beyond this, events are dropped so a slow endpoint cannot make
# a fast sandbox grow without bound.
MAX_PENDING = 10_000
CLICK_URL = "https://example.com/sandbox-click"
BOUNCE_REASONS = {
    "hard_bounce": ("hard", "550 5.1.1 no such user (simulated)"),
    "soft_bounce": ("soft", "452 4.2.2 mailbox full (simulated)"),
}


@dataclass(frozen=True)
class Rates:
    delivered: float = 0.0
    open: float = 0.0
    click: float = 0.0
    hard_bounce: float = 0.0
    soft_bounce: float = 0.0
    complaint: float = 0.0
    unsubscribe: float = 0.0


def parse_rates(text: str) -> Rates:
    """`delivered=0.95,open=0.4,...` from the `events` option; refused with a message
    naming the problem, so `service add` fails instead of a worker later."""
    example = "e.g. events=delivered=0.95,open=0.4,click=0.1"
    values: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, raw = (piece.strip() for piece in part.partition("="))
        if not sep:
            raise OptionError(f"option events: {part.strip()!r} must be NAME=RATE ({example})")
        if name not in GENERIC_EVENTS:
            known = ", ".join(GENERIC_EVENTS)
            raise OptionError(f"option events: unknown event {name!r} (known: {known})")
        if name in values:
            raise OptionError(f"option events: {name} is given twice")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise OptionError(f"option events: {name} must be a number from 0 to 1, not {raw!r}")
        values[name] = value
    if not values:
        raise OptionError(f"option events must name at least one rate ({example})")
    bounces = values.get("hard_bounce", 0.0) + values.get("soft_bounce", 0.0)
    values.setdefault("delivered", max(0.0, 1.0 - bounces))
    if values["delivered"] + bounces > 1.0 + 1e-9:
        raise OptionError(
            "option events: delivered + hard_bounce + soft_bounce must not exceed 1"
            f" (a message has one fate), not {values['delivered'] + bounces:g}"
        )
    return Rates(**values)


def parse_url(raw: str) -> str:
    """The `webhook_url` option: an absolute http(s) URL."""
    try:
        url = httpx.URL(raw.strip())
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise OptionError(f"option webhook_url must be an http(s) URL, not {raw!r}")
    return str(url)


def draw(rates: Rates, rng: random.Random) -> list[str]:
    """What becomes of one accepted message, as option names in the order they happen."""
    fate = rng.random()
    if fate < rates.hard_bounce:
        return ["hard_bounce"]
    fate -= rates.hard_bounce
    if fate < rates.soft_bounce:
        return ["soft_bounce"]
    fate -= rates.soft_bounce
    if fate >= rates.delivered:
        return []
    events = ["delivered"]
    engaged = rng.random()
    if engaged < max(rates.open, rates.click):
        events.append("open")
    if engaged < rates.click:
        events.append("click")
    if rng.random() < rates.complaint:
        events.append("complaint")
    if rng.random() < rates.unsubscribe:
        events.append("unsubscribe")
    return events


def generic_event(
    name: str, message: OutgoingMessage, provider_message_id: str, at: float
) -> dict[str, Any]:
    """One event in our generic webhook format."""
    data: dict[str, Any] = {}
    if name in BOUNCE_REASONS:
        data["bounce_type"], data["reason"] = BOUNCE_REASONS[name]
    elif name == "click":
        data["url"] = CLICK_URL
    event: dict[str, Any] = {
        "event": GENERIC_EVENTS[name],
        "subtask_id": message.sub_task_id,
        "provider_message_id": provider_message_id,
        "recipient": message.to_email,
        "task_id": message.task_id,
        "timestamp": at,
        "event_id": f"{provider_message_id}:{name}",
        "data": data,
    }
    if message.headers.get("Message-ID"):
        event["message_id"] = message.headers["Message-ID"]
    return event


def plan(events: list[dict[str, Any]], rng: random.Random) -> list[tuple[float, Any]]:
    """The requests that carry one message's events: (delay, body), shuffled, now and then
    one event twice, some requests holding several events as a list."""
    events = list(events)
    rng.shuffle(events)
    if events and rng.random() < DUPLICATE_RATE:
        events.insert(rng.randint(0, len(events)), rng.choice(events))
    bodies: list[list[dict[str, Any]]] = []
    for event in events:
        if bodies and rng.random() < BATCH_RATE:
            bodies[-1].append(event)
        else:
            bodies.append([event])
    return [
        (rng.uniform(MIN_DELAY, MAX_DELAY), body[0] if len(body) == 1 else body) for body in bodies
    ]


class EventPoster:
    """Draws each accepted message's events and posts them in background tasks."""

    def __init__(
        self, service_name: str, rates: Rates, rng: random.Random, url: str | None = None
    ) -> None:
        self.service_name = service_name
        self.rates = rates
        self.rng = rng
        self.url_option = url
        self.url: str | None = url
        self.token: str | None = None
        self._client: httpx.AsyncClient | None = None
        # Strong references: the event loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_no_url = False

    def set_target(self, url: str, token: str) -> None:
        """The installation's endpoint and token; the `webhook_url` option wins over `url`."""
        self.url = self.url_option or url
        self.token = token

    def accepted(self, message: OutgoingMessage, provider_message_id: str) -> None:
        """Schedule the events of one message just accepted; returns at once."""
        if self.url is None:
            if not self._warned_no_url:
                self._warned_no_url = True
                log.warning(
                    "sandbox %s: events are on but no webhook URL is known; not posting",
                    self.service_name,
                    extra={"action": "sandbox_events_off", "service": self.service_name},
                )
            return
        now = time.time()
        events = [
            generic_event(name, message, provider_message_id, now + index * 0.001)
            for index, name in enumerate(draw(self.rates, self.rng))
        ]
        for delay, body in plan(events, self.rng):
            if len(self._tasks) >= MAX_PENDING:
                self._dropped(message.sub_task_id, f"more than {MAX_PENDING} posts waiting")
                continue
            task = asyncio.create_task(self._post_later(delay, body, message.sub_task_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post_later(self, delay: float, body: Any, sub_task_id: int) -> None:
        await asyncio.sleep(delay)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        problem = ""
        for wait in (*RETRY_DELAYS, None):
            try:
                response = await self._http().post(str(self.url), json=body, headers=headers)
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            # Whatever goes wrong, a simulated provider must not disturb the worker.
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if wait is not None:
                await asyncio.sleep(wait)
        self._dropped(sub_task_id, f"{problem} after {len(RETRY_DELAYS) + 1} tries")

    def _dropped(self, sub_task_id: int, why: str) -> None:
        log.warning(
            "sandbox %s: events of sub-task %d not posted to %s: %s",
            self.service_name,
            sub_task_id,
            self.url,
            why,
            extra={
                "action": "sandbox_event_dropped",
                "service": self.service_name,
                "sub_task_id": sub_task_id,
            },
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(POST_TIMEOUT))
        return self._client
