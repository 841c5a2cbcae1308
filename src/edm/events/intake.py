"""Step one of every webhook: the raw request into the event log, committed.

Nothing is parsed before this commit, so a request that passed authentication is never
lost to a parsing bug, a crash or a database error further on; the caller answers 2xx
only once the commit holding its request is done.

A serving process commits the requests that arrive together in one transaction
(`IntakeWriter`, a group commit): each still waits for its own commit before its answer,
but the transaction, the disk flush and the hop to a thread are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from edm.db import event_queries as eq
from edm.db.queries import query

log = logging.getLogger(__name__)

# Headers kept with the raw body: enough to verify and to debug, nothing else.
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "x-webhook-timestamp",
    "x-webhook-appkey",
    "x-webhook-signature",
)
# Requests committed together at most (bounds one statement's parameters).
GROUP_REQUESTS = 100


def log_request(engine: Engine, provider: str, headers: Mapping[str, str], body: bytes) -> int:
    """Commit one request to the event log; its id."""
    with engine.begin() as conn:
        return insert_requests(conn, [_row(provider, headers, body)])[0]


def insert_requests(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert logged requests in one statement; their ids, in the order of `rows` (ids
    are drawn in the order rows are inserted, so sorting them restores it)."""
    inserted = conn.execute(
        query(eq.LOG_REQUESTS, conn.dialect.name), {"rows": json.dumps(rows)}
    ).scalars()
    return sorted(int(request_id) for request_id in inserted)


def _row(provider: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
    return {
        "provider": provider,
        "headers": kept,
        # Kept as text; bytes that are not UTF-8, and NUL (which PostgreSQL's text cannot
        # hold), survive as replacement marks: such a body is not JSON and is logged as
        # invalid rather than refused.
        "body": body.decode("utf-8", "replace").replace("\x00", "\ufffd"),
    }


@dataclass
class _Waiting:
    row: dict[str, Any]
    body: bytes
    check: Callable[[bytes], Any]
    future: asyncio.Future[tuple[int, Any]]
    loop: asyncio.AbstractEventLoop


class IntakeWriter:
    """One thread that commits the requests waiting for it in one transaction, then
    answers each with its id and the result of its `check` (run after the commit, off the
    event loop). A failed commit fails every request of the group: each answers 503 and
    its sender retries."""

    def __init__(self, engine: Engine, group: int = GROUP_REQUESTS) -> None:
        self.engine = engine
        self.group = group
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edm-intake", daemon=True)
        self._starting = threading.Lock()

    def start(self) -> None:
        """Start the thread (once; the app's lifespan does it, or the first request)."""
        with self._starting:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Commit what is waiting, then stop."""
        if self._thread.ident is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    async def log(
        self, provider: str, headers: Mapping[str, str], body: bytes, check: Callable[[bytes], Any]
    ) -> tuple[int, Any]:
        """(request id, check(body)) once the request is committed."""
        self.start()  # an ASGI server run without lifespan events still gets its answers
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, Any]] = loop.create_future()
        self._queue.put(_Waiting(_row(provider, headers, body), body, check, future, loop))
        return await future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.group:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    stopping = True
                    break
                group.append(waiting)
            self._commit(group)

    def _commit(self, group: list[_Waiting]) -> None:
        try:
            with self.engine.begin() as conn:
                ids = insert_requests(conn, [waiting.row for waiting in group])
        except Exception as exc:
            if len(group) > 1:  # one request the database refuses must not fail the others
                for waiting in group:
                    self._commit([waiting])
                return
            _answer(group[0], None, exc)  # 503: its sender retries
            return
        for waiting, request_id in zip(group, ids, strict=True):
            try:
                checked = waiting.check(waiting.body)
            except Exception:  # logged all the same: processing will judge the body
                log.exception("checking webhook request %s failed", request_id)
                checked = None
            _answer(waiting, (request_id, checked), None)


def _answer(waiting: _Waiting, result: tuple[int, Any] | None, error: BaseException | None) -> None:
    """Hand the outcome to the request's event loop (gone if the server stopped)."""
    with contextlib.suppress(RuntimeError):
        waiting.loop.call_soon_threadsafe(_settle, waiting.future, result, error)


def _settle(
    future: asyncio.Future[tuple[int, Any]],
    result: tuple[int, Any] | None,
    error: BaseException | None,
) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
