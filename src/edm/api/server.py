"""`edm serve`: the app on uvicorn and the scheduler, in one event loop.

One signal stops both: uvicorn stops accepting and finishes the requests in flight (and
their background processing) while the supervisor stops its workers as `edm worker`
does. Whichever of the two ends first, for any reason, ends the other, so the process
never lives on half-working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from sqlalchemy import Engine

from edm.api.app import create_app
from edm.config import Settings
from edm.db.outage import log_failure
from edm.health.alerts import AlertLoop
from edm.scheduler.maintenance import RepairTimer, run_upkeep
from edm.scheduler.supervisor import Supervisor

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: it would re-raise the signal after a
    graceful stop (so the process dies by it instead of exiting 0) and knows nothing of
    the scheduler."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class UpkeepLoop:
    """Upkeep alone, for `--no-worker`: unprocessed webhook requests and unmatched events
    are still retried, and leases still reaped, where nothing sends."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        repairs = RepairTimer(self.settings.repair_seconds)
        alerts = AlertLoop(self.engine, self.settings)
        alerts.start()
        try:
            await self._loop(repairs)
        finally:
            await asyncio.to_thread(alerts.stop)
        return 0

    async def _loop(self, repairs: RepairTimer) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(
                    run_upkeep, self.engine, self.settings, repair=repairs.due()
                )
            except Exception as exc:
                log_failure(log, "upkeep failed; trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.maintenance_seconds)


async def serve(
    engine: Engine,
    settings: Settings,
    *,
    host: str,
    port: int,
    worker: bool = True,
    say: Callable[[str], None] = lambda message: None,
) -> int:
    """Run until SIGTERM or SIGINT; the exit status (0 after a clean stop)."""
    config = uvicorn.Config(
        create_app(engine, settings),
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    server = _Server(config)
    background: Supervisor | UpkeepLoop = (
        Supervisor(engine, settings, say=say) if worker else UpkeepLoop(engine, settings)
    )

    def stop() -> None:
        server.should_exit = True
        background.request_stop()

    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop)
    http = asyncio.create_task(_serve_http(server), name="http")
    # The supervisor installs its own handlers for the same signals (stopping itself
    # only); the wait below carries its stop over to the server.
    work = asyncio.create_task(background.run(), name="scheduler" if worker else "upkeep")
    await asyncio.wait({http, work}, return_when=asyncio.FIRST_COMPLETED)
    stop()
    results = await asyncio.gather(http, work, return_exceptions=True)
    for sig in SIGNALS:
        loop.remove_signal_handler(sig)
    for result in results:
        if isinstance(result, BaseException):
            log.error("stopped by an error", exc_info=result)
            return 1
    return max(int(result or 0) for result in results)


async def _serve_http(server: uvicorn.Server) -> int:
    """1 if the server could not start (the port is taken): uvicorn exits the process for
    that, which would skip the scheduler's orderly stop."""
    try:
        await server.serve()
    except SystemExit as exc:
        return int(exc.code or 1) if not isinstance(exc.code, str) else 1
    return 0 if server.started else 1


@contextlib.contextmanager
def serving_in_thread(engine: Engine, settings: Settings) -> Iterator[str]:
    """The app on a free loopback port in a thread of this process (the demo, tests);
    yields its base URL and stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(engine, settings), log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
