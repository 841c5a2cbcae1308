"""Wake-ups across processes: PostgreSQL LISTEN/NOTIFY on one channel.

Management commands NOTIFY in the same transaction as their change, so a worker never
wakes before the change is visible. SQLite has no such channel: there workers rely on
their short idle poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text

CHANNEL = "edm"
log = logging.getLogger(__name__)


def notify(conn: Connection, payload: str) -> None:
    """Announce `work` or `services` to every listening instance (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload}
        )


class Listener:
    """A thread holding one LISTEN connection and calling back on each notification."""

    def __init__(self, engine: Engine, on_notify: Callable[[str], None]) -> None:
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.on_notify = on_notify
        # Set while LISTEN is in force: a NOTIFY sent before then is not heard.
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edm-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg  # only instances that listen need the driver's own API

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.on_notify(note.payload)
            except psycopg.Error as exc:
                self.ready.clear()
                log.warning("LISTEN connection lost (%s); retrying", exc)
                self._stop.wait(1.0)
