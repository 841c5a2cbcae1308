"""How often a process runs a costly look at the whole history: once per period while it
finds nothing, every time while it finds something, so that a fix is seen at once.

The invariants check and the facts' and funnels' sweeps read every sub-task and event
(seconds at a million sub-tasks); the alert loop, the pages' banner and the repair loop
would otherwise pay that every few seconds. Kept per database, in this process.
"""

from __future__ import annotations

import threading
import time


class WhileClean:
    def __init__(self) -> None:
        self._clean_at: dict[str, float] = {}  # database URL -> when it last found nothing
        self._lock = threading.Lock()

    def clean_age(self, database: str) -> float | None:
        """Seconds since the last look at `database` found nothing; None if the last found
        something, or none was made."""
        with self._lock:
            clean_at = self._clean_at.get(database)
        return None if clean_at is None else time.monotonic() - clean_at

    def due(self, database: str, period: float) -> bool:
        age = self.clean_age(database)
        return age is None or age >= period

    def looked(self, database: str, *, clean: bool) -> None:
        with self._lock:
            if clean:
                self._clean_at[database] = time.monotonic()
            else:
                self._clean_at.pop(database, None)
