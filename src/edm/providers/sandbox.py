"""A provider that accepts mail without sending it, like a file-based mail backend.

With `outbox=PATH` every call is appended to a JSON-lines file, and the file is also the
provider's memory of accepted idempotency keys: a key accepted by any earlier process
that wrote to the same outbox is answered with the earlier result and marked
`"duplicate": true`, which is how a real provider treats a repeated `request_id`.

With `events=RATES` each accepted message's tracking events are drawn and posted to the
generic webhook (`webhook_url`, or the installation's own): see sandbox_events.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import random
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    Provider,
    RecipientError,
    SendResult,
    ServiceError,
    TransientError,
    UnknownOutcomeError,
)
from edm.providers.sandbox_events import EventPoster, parse_rates, parse_url

MEMORY_KEYS = 10_000
RATE_OPTIONS = ("fail_transient", "fail_recipient", "fail_service", "fail_unknown")
# Tried in this order, each with its own rate.
SIMULATED_FAILURES = (
    ("fail_service", ServiceError, "sandbox: account suspended (simulated)"),
    ("fail_recipient", RecipientError, "sandbox: mailbox does not exist (simulated)"),
    ("fail_transient", TransientError, "sandbox: try again later (simulated)"),
)


def _rate(options: dict[str, str], key: str) -> float:
    raw = options.get(key, "0")
    try:
        value = float(raw)
    except ValueError:
        raise OptionError(f"option {key} must be a number from 0 to 1, not {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise OptionError(f"option {key} must be from 0 to 1, not {value}")
    return value


class _Outbox:
    """The outbox file plus the keys it holds, re-read under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted: dict[str, str] = {}
        self._offset = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def record(self, line: dict, key: str, new_message_id: str) -> tuple[str, bool]:
        """Append one call; return the message id and whether the key was seen before."""
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._catch_up(handle)
                earlier = self.accepted.get(key)
                duplicate = earlier is not None
                message_id = earlier or new_message_id
                line = {
                    **line,
                    "message_id": message_id,
                    "duplicate": duplicate,
                    "accepted": not duplicate,
                    "outcome": "duplicate" if duplicate else "accepted",
                }
                handle.seek(0, os.SEEK_END)
                handle.write(json.dumps(line, sort_keys=True) + "\n")
                handle.flush()
                self._offset = handle.tell()
                if not duplicate:
                    self.accepted[key] = message_id
                return message_id, duplicate
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def log_failure(self, line: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(
                    json.dumps({**line, "accepted": False, "duplicate": False}, sort_keys=True)
                    + "\n"
                )
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _catch_up(self, handle) -> None:  # type: ignore[no-untyped-def]
        handle.seek(self._offset)
        for raw in handle:
            if not raw.endswith("\n"):
                break  # a line another process is still writing
            self._offset += len(raw.encode("utf-8"))
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if entry.get("accepted"):
                self.accepted[entry["idempotency_key"]] = entry["message_id"]


class SandboxProvider(Provider):
    name = "sandbox"
    idempotency_window = math.inf

    def __init__(self, service_name: str, options: dict[str, str]) -> None:
        super().__init__(service_name, options)
        unknown = set(options) - {
            "outbox",
            "latency",
            "seed",
            "events",
            "webhook_url",
            *RATE_OPTIONS,
        }
        if unknown:
            raise OptionError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
        try:
            self.latency = float(options.get("latency", "0"))
        except ValueError:
            raise OptionError(
                f"option latency must be seconds, not {options['latency']!r}"
            ) from None
        if not 0 <= self.latency <= 3600:  # also refuses nan and inf
            raise OptionError(f"option latency must be from 0 to 3600 seconds, not {self.latency}")
        self.rates = {key: _rate(options, key) for key in RATE_OPTIONS}
        seed = options.get("seed")
        self.random = random.Random(seed)
        self.outbox = _Outbox(Path(options["outbox"])) if options.get("outbox") else None
        # Without an outbox: the most recent keys only, so a long run stays flat in memory
        # (a real provider's de-duplication window is bounded too).
        self.accepted: OrderedDict[str, str] = OrderedDict()
        self.events = self._event_poster(options, seed)
        self.wants_webhook = self.events is not None

    def _event_poster(self, options: dict[str, str], seed: str | None) -> EventPoster | None:
        url = parse_url(options["webhook_url"]) if options.get("webhook_url") else None
        if "events" not in options:
            if url:
                raise OptionError("option webhook_url needs option events")
            return None
        # Its own generator, so turning events on does not change the simulated failures.
        rng = random.Random(f"{seed}:events") if seed is not None else random.Random()
        return EventPoster(self.service_name, parse_rates(options["events"]), rng, url)

    def set_webhook(self, url: str, token: str) -> None:
        if self.events:
            self.events.set_target(url, token)

    async def close(self) -> None:
        if self.events:
            await self.events.close()

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        line = {
            "service": self.service_name,
            "sub_task_id": message.sub_task_id,
            "task_id": message.task_id,
            "idempotency_key": message.idempotency_key,
            "to": message.to_email,
            "subject": message.subject,
            "time": time.time(),
        }
        roll = self.random.random
        for key, error_type, text in SIMULATED_FAILURES:
            if self.rates[key] and roll() < self.rates[key]:
                error = error_type(text)
                if self.outbox:
                    await asyncio.to_thread(
                        self.outbox.log_failure, {**line, "outcome": error.error_class}
                    )
                raise error
        message_id, duplicate = await self._accept(line, message.idempotency_key)
        if self.events and not duplicate:
            # Before a simulated lost answer too: its events are how it gets settled.
            self.events.accepted(message, message_id)
        if self.rates["fail_unknown"] and not duplicate and roll() < self.rates["fail_unknown"]:
            raise UnknownOutcomeError("sandbox: accepted, but the answer was lost (simulated)")
        return SendResult(provider_message_id=message_id, duplicate=duplicate)

    async def _accept(self, line: dict, key: str) -> tuple[str, bool]:
        new_id = f"sandbox-{secrets.token_hex(16)}"
        if self.outbox:
            return await asyncio.to_thread(self.outbox.record, line, key, new_id)
        earlier = self.accepted.get(key)
        if earlier:
            return earlier, True
        self.accepted[key] = new_id
        if len(self.accepted) > MEMORY_KEYS:
            self.accepted.popitem(last=False)
        return new_id, False
