"""The loop that sends for one service.

It claims up to its pace allows, waits for each row's slot, commits `sending`, calls the
provider and records the outcome. Claims are pipelined: while one group is on the
wire the next can be claimed, up to `max_in_flight` rows. It sleeps until its next slot
(computed from the database's clock), or until woken by new work, or for one short idle
poll: it never polls on a fixed period that would stretch the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace

from sqlalchemy import Engine

from edm.config import Settings
from edm.db import queries as q
from edm.db.secrets import signing_key
from edm.health import metrics
from edm.messages import MessageBuilder, TaskTemplates, TemplateError
from edm.providers.base import OutgoingMessage, Provider, ProviderError
from edm.scheduler.claim import Claim, ClaimedRow, claim
from edm.scheduler.transitions import (
    Outcome,
    Refund,
    Settle,
    mark_sending,
    record_outcomes,
    release,
    settle_unsent,
)

log = logging.getLogger(__name__)

# Longest single sleep while waiting for a pace slot, so an operator's change of interval
# is seen without a restart.
MAX_PACE_SLEEP = 5.0
# What a rendered message costs beyond its text (headers, objects), in bytes.
MESSAGE_OVERHEAD_BYTES = 2048


@dataclass(frozen=True)
class ServiceInfo:
    id: int
    name: str
    provider: str
    options: dict
    config_version: int


class ServiceWorker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        service: ServiceInfo,
        provider: Provider,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner  # the instance: its claims are released if it dies
        self.settings = settings
        self.service = service
        self.provider = provider
        self.stopping = False
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._in_flight = 0
        self._batches: set[asyncio.Task] = set()
        self._failure: BaseException | None = None
        self._signing_key = ""
        self._turns = provider.max_concurrent_sends
        # Claim no more than can be sent well within a lease.
        self._claim_size = (
            min(settings.batch_size, 2 * self._turns) if self._turns else (settings.batch_size)
        )
        self._send_turns = asyncio.Semaphore(self._turns or 1)  # used only with turns
        self._builders: dict[int, MessageBuilder | TemplateError] = {}
        # Rendered messages held, by sub-task, so a big campaign cannot exhaust memory.
        self._message_bytes: dict[int, int] = {}
        self._in_flight_bytes = 0
        self._message_estimate = MESSAGE_OVERHEAD_BYTES
        self._template_failures: dict[int, int] = {}  # task id -> failures in a row
        self._watermarks: dict[int, int] = {}
        self._watermarks_reset_at = 0.0

    # -- control ------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; groups already on the wire finish, the rest is released."""
        self.stopping = True
        self._wake.set()
        self._capacity.set()

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            self._signing_key = await asyncio.to_thread(
                signing_key, self.engine, self.settings.secret_key
            )
            while not self.stopping:
                if self._failure:
                    raise self._failure
                if time.monotonic() >= self._watermarks_reset_at:
                    # Retried, released and reaped rows below the watermarks come back.
                    self._watermarks.clear()
                    self._watermarks_reset_at = time.monotonic() + self.settings.rescan_seconds
                    self._message_estimate = await asyncio.to_thread(self._expected_message_bytes)
                room = self._room()
                if room <= 0:
                    self._capacity.clear()
                    await self._capacity.wait()
                    continue
                # Cleared before the claim, not before the sleep: a wake-up (a NOTIFY of new
                # work) that arrives while the claim looks finds the sleep cut short.
                self._wake.clear()
                taken = await asyncio.to_thread(
                    claim,
                    self.engine,
                    self.service.id,
                    min(self._claim_size, room),
                    lease_seconds=self.settings.lease_seconds,
                    lookahead=self.settings.lookahead_seconds,
                    watermarks=self._watermarks,
                    owner=self.owner,
                )
                if taken.rows:
                    self._start_batch(taken)
                    continue
                if taken.wake_at is None:
                    delay = self.settings.idle_poll_seconds
                else:
                    delay = min(max(taken.wake_at - taken.db_now, 0.0), MAX_PACE_SLEEP)
                await self._sleep(delay)
        finally:
            self.stopping = True
            if self._batches:
                await asyncio.gather(*self._batches, return_exceptions=True)
            await self.provider.close()
        if self._failure:
            raise self._failure

    def _room(self) -> int:
        """How many rows may be claimed now: bounded by rows and by the bytes their
        rendered messages are expected to take."""
        rows = self.settings.max_in_flight - self._in_flight
        free_bytes = self.settings.max_in_flight_bytes - self._in_flight_bytes
        if free_bytes <= 0:
            return 0
        by_bytes = free_bytes // self._message_estimate
        # Nothing held: one row may always go, however large, or a task could never send.
        return min(rows, max(by_bytes, 1 if self._in_flight == 0 else 0))

    def _expected_message_bytes(self) -> int:
        with self.engine.connect() as conn:
            chars = conn.execute(
                q.query(q.RUNNING_TEMPLATE_CHARS, self.engine.dialect.name)
            ).scalar()
        return int(chars or 0) + MESSAGE_OVERHEAD_BYTES

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _start_batch(self, taken: Claim) -> None:
        self._in_flight += len(taken.rows)
        # Until its message is rendered, a row holds the bytes one is expected to take.
        for row in taken.rows:
            self._message_bytes[row.id] = self._message_estimate
        self._in_flight_bytes += self._message_estimate * len(taken.rows)
        task = asyncio.create_task(self._process(taken))
        self._batches.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        if not task.cancelled() and task.exception() and not self._failure:
            self._failure = task.exception()
            self._wake.set()

    def _finished(self, ids: list[int]) -> None:
        self._in_flight -= len(ids)
        for sub_task_id in ids:
            self._in_flight_bytes -= self._message_bytes.pop(sub_task_id, 0)
        self._capacity.set()

    # -- one claim: render, wait for each slot, send, record ------------------------------------
    async def _process(self, taken: Claim) -> None:
        loop = asyncio.get_running_loop()
        db_offset = taken.db_now - loop.time()  # database clock = loop.time() + db_offset
        remaining = list(taken.rows)
        sends: list[asyncio.Task] = []
        try:
            messages = await self._render(taken)
            # The rows to send take the claim's first slots; the others' were given back.
            sendable = (row for row in taken.rows if row.id in messages)
            remaining = [
                replace(row, slot_at=slot.slot_at)
                for row, slot in zip(sendable, taken.rows, strict=False)
            ]
            last_start = -math.inf
            while remaining and not self.stopping:
                # A paced service never bursts, even when this loop runs late: one row per
                # slot, at least one interval apart.
                start_at = max(remaining[0].slot_at, last_start + taken.interval)
                wait = start_at - (loop.time() + db_offset)
                if wait > 0:
                    await self._sleep_unless_stopping(wait)
                    if self.stopping:
                        break
                now = last_start = loop.time() + db_offset
                if taken.interval > 0:
                    due = remaining[:1]
                else:
                    due = [row for row in remaining if row.slot_at <= now + 1e-3]
                if self._turns:
                    # A provider with few connections: mark `sending` only what it can carry
                    # now, so no row waits out its lease in `sending` behind the others.
                    due = due[: self._turns]
                remaining = remaining[len(due) :]
                send = await self._start_group(taken, due, messages)
                if send and self._turns:
                    await send
                elif send:
                    sends.append(send)
        finally:
            if remaining:
                ids = [row.id for row in remaining]
                await asyncio.to_thread(release, self.engine, taken.token, ids)
                self._finished(ids)
            if sends:
                await asyncio.gather(*sends)

    async def _render(self, taken: Claim) -> dict[int, OutgoingMessage]:
        """Every message of a claim, before its first slot. Rows that cannot be sent
        (suppressed contact, failing template) are settled at once and give back the
        pace slot and quota unit they were claimed with."""
        messages: dict[int, OutgoingMessage] = {}
        settles: list[Settle] = []
        pauses: dict[int, str] = {}
        for row in taken.rows:
            contact = taken.contacts.get(row.contact_id)
            if contact is None or contact["status"] != "active":
                status = contact["status"] if contact else "deleted"
                settles.append(Settle(row.id, "skipped", f"contact is {status}"))
                continue
            try:
                builder = await self._builder(row.task_id)
                message = builder.build(
                    sub_task_id=row.id,
                    task_id=row.task_id,
                    idempotency_key=row.idempotency_key,
                    contact=contact,
                )
            except TemplateError as exc:
                settles.append(Settle(row.id, "failed", str(exc), "template"))
                reason = self._count_template_failure(row.task_id, str(exc))
                if reason:
                    pauses[row.task_id] = reason
                continue
            if self._template_failures:
                self._template_failures.pop(row.task_id, None)
            messages[row.id] = message
            size = _message_bytes(message)
            self._in_flight_bytes += size - self._message_bytes.get(row.id, 0)
            self._message_bytes[row.id] = size
        if settles:
            refund = Refund(
                self.service.id, len(settles), taken.interval, taken.pace_end, taken.quota_day
            )
            await asyncio.to_thread(
                settle_unsent, self.engine, taken.token, settles, refund, pauses
            )
            for task_id, reason in pauses.items():
                log.warning(
                    "task %s paused: %s",
                    task_id,
                    reason,
                    extra={"action": "task_paused", "task_id": task_id},
                )
            self._finished([settle.id for settle in settles])
        return messages

    def _count_template_failure(self, task_id: int, error: str) -> str | None:
        """The reason to pause the task once its templates failed too often in a row."""
        failures = self._template_failures.get(task_id, 0) + 1
        self._template_failures[task_id] = failures
        if failures < self.settings.template_failure_limit:
            return None
        self._template_failures[task_id] = 0
        return f"paused after {failures} template failures in a row (last: {error})"

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        stop_poll = 0.05
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, stop_poll))

    async def _start_group(
        self, taken: Claim, rows: list[ClaimedRow], messages: dict[int, OutgoingMessage]
    ) -> asyncio.Task | None:
        ids = [row.id for row in rows]
        sending = await asyncio.to_thread(
            mark_sending, self.engine, taken.token, ids, self.settings.lease_seconds
        )
        self._finished([i for i in ids if i not in sending])
        if not sending:
            return None
        group = [(messages[i], attempts) for i, attempts in sending.items()]
        return asyncio.create_task(self._send_group(taken.token, group))

    async def _builder(self, task_id: int) -> MessageBuilder:
        """The task's message builder, made once per worker: a task's content is fixed."""
        builder = self._builders.get(task_id)
        if builder is None:
            builder = await asyncio.to_thread(self._load_task, task_id)
            self._builders[task_id] = builder
        if isinstance(builder, TemplateError):
            raise builder
        return builder

    def _load_task(self, task_id: int) -> MessageBuilder | TemplateError:
        with self.engine.connect() as conn:
            task = conn.execute(
                q.query(q.TASK_CONTENT, self.engine.dialect.name), {"task_id": task_id}
            ).one()
        try:
            templates = TaskTemplates(task.subject, task.html, task.text_body)
        except TemplateError as exc:
            return exc
        return MessageBuilder(
            templates,
            from_addr=task.from_addr,
            default_from=self.service.options.get("from"),
            public_url=self.settings.public_url,
            signing_key=self._signing_key,
        )

    async def _send_group(self, token: str, group: list[tuple[OutgoingMessage, int]]) -> None:
        try:
            outcomes = await self._send_all(group)
            for outcome in outcomes:
                metrics.SENDS.labels(self.service.name, outcome.kind).inc()
            await asyncio.to_thread(
                record_outcomes, self.engine, self.service.id, token, outcomes, self.settings
            )
            if any(o.kind == "service" for o in outcomes):
                log.error(
                    "service %s frozen: %s",
                    self.service.name,
                    next(o.error for o in outcomes if o.kind == "service"),
                )
                self.stop()
        finally:
            self._finished([message.sub_task_id for message, _ in group])

    def _call_timeout(self) -> float:
        """Our side gives up before the lease runs out, so the reaper never races a live call."""
        return max(self.settings.lease_seconds * 0.8, 0.01)

    async def _send_all(self, group: list[tuple[OutgoingMessage, int]]) -> list[Outcome]:
        """Every message of a group at once, under one time limit for the whole group."""
        if self._turns:
            return list(await asyncio.gather(*(self._send_in_turn(m, a) for m, a in group)))
        started = time.time()
        timeout = self._call_timeout()
        calls = [asyncio.ensure_future(self._call_provider(m, a)) for m, a in group]
        _, late = await asyncio.wait(calls, timeout=timeout)
        for call in late:
            call.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        return [
            _timed_out(message, attempts, started, timeout) if call in late else call.result()
            for call, (message, attempts) in zip(calls, group, strict=True)
        ]

    async def _send_in_turn(self, message: OutgoingMessage, attempts: int) -> Outcome:
        """A provider with few connections: the time limit starts once a turn is had, so
        waiting for a turn is never mistaken for a provider that hangs."""
        async with self._send_turns:
            started = time.time()
            timeout = self._call_timeout()
            try:
                async with asyncio.timeout(timeout):
                    return await self._call_provider(message, attempts)
            except TimeoutError:
                return _timed_out(message, attempts, started, timeout)

    async def _call_provider(self, message: OutgoingMessage, attempts: int) -> Outcome:
        clock = time.perf_counter()
        try:
            return await self._call_provider_once(message, attempts)
        finally:  # a call cut off by our time limit counts too, at the time it took
            metrics.SEND_SECONDS.labels(self.service.name).observe(time.perf_counter() - clock)

    async def _call_provider_once(self, message: OutgoingMessage, attempts: int) -> Outcome:
        started = time.time()
        try:
            result = await self.provider.send(message)
        except ProviderError as exc:
            error = f"{exc}" + (f" (code {exc.code})" if exc.code else "")
            return Outcome(
                message.sub_task_id,
                attempts,
                exc.error_class,
                started,
                error=error,
                retry_after=exc.retry_after,
            )
        except TimeoutError:  # the provider's own time limit (ours is applied by the caller)
            return Outcome(
                message.sub_task_id,
                attempts,
                "unknown",
                started,
                error="the provider's own time limit ran out: outcome unknown",
            )
        except Exception as exc:  # a provider bug: the request may have left, never resend blindly
            log.exception("provider %s raised", self.service.name)
            return Outcome(
                message.sub_task_id,
                attempts,
                "unknown",
                started,
                error=f"provider raised {type(exc).__name__}: {exc}",
            )
        return Outcome(
            message.sub_task_id, attempts, "sent", started, message_id=result.provider_message_id
        )


def _message_bytes(message: OutgoingMessage) -> int:
    return (
        len(message.subject)
        + len(message.html or "")
        + len(message.text or "")
        + MESSAGE_OVERHEAD_BYTES
    )


def _timed_out(message: OutgoingMessage, attempts: int, started: float, timeout: float) -> Outcome:
    """No answer in time: the request may have left, so the outcome is unknown."""
    return Outcome(
        message.sub_task_id,
        attempts,
        "unknown",
        started,
        error=f"no answer from the provider within {timeout:.1f}s",
    )
