"""One worker per enabled, unfrozen service, kept alive for as long as the instance runs.

Every `supervisor_seconds` (or at once on a `services` notification) the supervisor
re-reads the services table: it starts workers for new or unfrozen services, stops those
of frozen or disabled ones, restarts a worker whose service changed, and restarts a
worker that died, with exponential back-off, recording the error on the service. It
writes one heartbeat row per worker so that health checks can see which services are
really being sent for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from edm.config import Settings
from edm.db import queries as q
from edm.db import secrets as db_secrets
from edm.db.notify import Listener
from edm.db.outage import log_failure
from edm.health.alerts import AlertLoop
from edm.health.repair import Repair, record
from edm.providers.registry import make_provider
from edm.scheduler.maintenance import RepairTimer, run_upkeep, work_left
from edm.scheduler.worker import ServiceInfo, ServiceWorker

log = logging.getLogger(__name__)

# How long start-up waits for the LISTEN connection before going on without it.
LISTEN_READY_SECONDS = 5.0
# Where the API receives events in our generic format (docs/webhooks.md).
GENERIC_WEBHOOK_PATH = "/api/webhooks/generic"


@dataclass
class Handle:
    service: ServiceInfo
    worker: ServiceWorker | None = None
    task: asyncio.Task | None = None
    started_at: float = 0.0
    restarts: int = 0
    retry_at: float = 0.0
    last_error: str | None = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass
class Snapshot:
    """How many workers run out of how many usable services, at the last sync."""

    running: int = 0
    wanted: int = 0


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        exit_when_idle: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.exit_when_idle = exit_when_idle
        self.say = say or (lambda message: None)
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.handles: dict[int, Handle] = {}
        self.snapshot = Snapshot()
        self._stop = asyncio.Event()
        self._resync = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- control -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._resync.set()

    def stop_from_thread(self) -> None:
        """request_stop for callers outside the supervisor's event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between: already stopped
                loop.call_soon_threadsafe(self.request_stop)

    def on_notify(self, payload: str) -> None:
        """Called from the LISTEN thread."""
        if self._loop:
            self._loop.call_soon_threadsafe(self._handle_notify, payload)

    def _handle_notify(self, payload: str) -> None:
        if payload == "services":
            self._resync.set()
        for handle in self.handles.values():
            if handle.worker:
                handle.worker.wake()

    # -- main -------------------------------------------------------------------------------------
    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible outside the main thread (the demo runs us in a thread).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        listener = None
        if self.engine.dialect.name == "postgresql":
            listener = Listener(self.engine, self.on_notify)
            listener.start()
            # Listening before "started" is said: work added after it wakes the workers.
            # Should the database be slow, the idle poll still finds the work.
            await asyncio.to_thread(listener.ready.wait, LISTEN_READY_SECONDS)
        alerts = AlertLoop(self.engine, self.settings, self.instance_id)
        alerts.start()
        try:
            await self._sync()
            message = f"started {self.snapshot.running}/{self.snapshot.wanted} services"
            log.info(message)
            self.say(message)
            upkeep = asyncio.create_task(self._upkeep_loop())
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._resync.wait(), self.settings.supervisor_seconds)
                self._resync.clear()
                if not self._stop.is_set():
                    await self._sync()
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
        finally:
            await self._shutdown()
            if listener:
                listener.stop()
            await asyncio.to_thread(alerts.stop)
        return 0

    async def _upkeep_loop(self) -> None:
        repairs = RepairTimer(self.settings.repair_seconds)
        while not self._stop.is_set():
            try:
                # Idleness is seen before upkeep runs, so the upkeep after it completes
                # every task whose last rows settled in between: none is left `running`.
                idle = self.exit_when_idle and await asyncio.to_thread(work_left, self.engine) == 0
                await asyncio.to_thread(
                    run_upkeep, self.engine, self.settings, repair=repairs.due()
                )
                if idle:
                    self.say("no running task has work left: exiting")
                    self.request_stop()
                    return
            except Exception as exc:
                log_failure(log, "upkeep failed; trying again", exc)
            await asyncio.sleep(self.settings.maintenance_seconds)

    async def _shutdown(self) -> None:
        for handle in self.handles.values():
            if handle.worker:
                handle.worker.stop()
        tasks = [h.task for h in self.handles.values() if h.alive]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()
        try:
            await asyncio.to_thread(self._forget_heartbeats)
        except Exception:
            log.exception("could not remove heartbeats")

    # -- reconciling workers with the services table -------------------------------------------
    async def _sync(self) -> None:
        try:
            rows = await asyncio.to_thread(self._read_services)
        except Exception as exc:
            log.error("cannot read services: %s", exc)
            return
        wanted = {row.id: row for row in rows if row.enabled and not row.frozen}
        now = time.time()
        for service_id, handle in list(self.handles.items()):
            row = wanted.get(service_id)
            if row is None or row.config_version != handle.service.config_version:
                if handle.worker:
                    handle.worker.stop()
                if not handle.alive:
                    del self.handles[service_id]
                continue
            if handle.task is not None and handle.task.done():
                self._worker_died(handle, now)
        for service_id, row in wanted.items():
            handle = self.handles.get(service_id)
            if handle is None:
                handle = self.handles[service_id] = Handle(_service_info(row))
            if not handle.alive and now >= handle.retry_at:
                restarting = handle.worker is not None
                if restarting:
                    # A worker of this instance died: what it held comes back at once.
                    await asyncio.to_thread(self._release_claims, handle)
                await self._start(handle, now)
                if restarting and handle.alive:
                    await asyncio.to_thread(self._record_restart, handle)
        self.snapshot = Snapshot(
            running=sum(1 for sid in wanted if self.handles.get(sid) and self.handles[sid].alive),
            wanted=len(wanted),
        )
        try:
            await asyncio.to_thread(self._beat)
        except Exception as exc:
            log.error("cannot write heartbeats: %s", exc)

    async def _start(self, handle: Handle, now: float) -> None:
        service = handle.service
        try:
            provider = make_provider(service.provider, service.name, service.options)
            if provider.wants_webhook:
                # Once per worker start: a token rotated in the database reaches the
                # next start, and no send waits for it.
                token = await asyncio.to_thread(db_secrets.webhook_token, self.engine)
                provider.set_webhook(
                    self.settings.public_url.rstrip("/") + GENERIC_WEBHOOK_PATH, token
                )
        except Exception as exc:
            self._failed(handle, now, f"cannot start provider {service.provider}: {exc}")
            return
        handle.worker = ServiceWorker(
            self.engine, self.settings, service, provider, owner=self.instance_id
        )
        handle.task = asyncio.create_task(handle.worker.run(), name=f"worker-{service.name}")
        handle.started_at = now
        log.info("worker for service %s started", service.name)

    def _worker_died(self, handle: Handle, now: float) -> None:
        task = handle.task
        handle.task = None
        error = None if task.cancelled() else task.exception()
        if error is None:
            return  # stopped by itself (its service froze): the next sync decides
        if now - (handle.started_at or now) > self.settings.restart_backoff_max_seconds:
            # It ran long enough to have been healthy, not crash-looping: an outage now
            # (the database went away) restarts it after the first back-off step, not
            # after one more step for every outage this process has seen.
            handle.restarts = 0
        self._failed(handle, now, f"worker crashed: {type(error).__name__}: {error}")

    def _failed(self, handle: Handle, now: float, error: str) -> None:
        handle.restarts += 1
        delay = min(
            self.settings.restart_backoff_seconds * 2 ** (handle.restarts - 1),
            self.settings.restart_backoff_max_seconds,
        )
        handle.retry_at = now + delay
        handle.last_error = error
        log.error("service %s: %s; restarting in %.1fs", handle.service.name, error, delay)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    q.query(q.RECORD_SERVICE_ERROR, self.engine.dialect.name),
                    {"service_id": handle.service.id, "error": error},
                )
        except Exception:
            log.exception("could not record the error of service %s", handle.service.name)

    def _record_restart(self, handle: Handle) -> None:
        try:
            record(
                self.engine,
                [
                    Repair(
                        "worker_restart",
                        1,
                        f"worker of {handle.service.name} restarted (restart"
                        f" {handle.restarts}) after: {handle.last_error}",
                    )
                ],
                self.instance_id,
            )
        except Exception:
            log.exception("could not record the restart of %s", handle.service.name)

    def _release_claims(self, handle: Handle) -> None:
        try:
            with self.engine.begin() as conn:
                released = conn.execute(
                    q.query(q.RELEASE_WORKER, self.engine.dialect.name),
                    {
                        "owner": self.instance_id,
                        "service_id": handle.service.id,
                        "reason": "its worker crashed while sending: outcome unknown",
                    },
                ).rowcount
        except Exception as exc:  # the leases still run out: nothing is lost
            log.warning("could not release the claims of service %s: %s", handle.service.name, exc)
            return
        if released:
            log.info(
                "service %s: %d claims of the crashed worker released",
                handle.service.name,
                released,
                extra={"action": "claims_released", "service_id": handle.service.id},
            )

    # -- database ---------------------------------------------------------------------------------
    def _read_services(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(q.query(q.SERVICES, self.engine.dialect.name)).all()

    def _beat(self) -> None:
        rows = [
            {
                "instance_id": self.instance_id,
                "service_id": sid,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "state": "running" if h.alive else "restarting",
                "started_at": h.started_at,
                "restarts": h.restarts,
                "last_error": h.last_error,
            }
            for sid, h in self.handles.items()
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(q.query(q.HEARTBEAT, self.engine.dialect.name), rows)

    def _forget_heartbeats(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                q.query(q.FORGET_HEARTBEATS, self.engine.dialect.name),
                {"instance_id": self.instance_id},
            )


def _service_info(row) -> ServiceInfo:  # type: ignore[no-untyped-def]
    options = row.options if isinstance(row.options, dict) else json.loads(row.options or "{}")
    return ServiceInfo(row.id, row.name, row.provider, options, row.config_version)
