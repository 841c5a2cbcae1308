"""One thread per serving process that processes logged webhook requests in batches.

The webhook handler only logs the request (the commit that makes a 2xx safe) and wakes
this thread; processing many requests per transaction is what keeps intake ahead of a
provider's bursts. Upkeep remains the safety net for requests a stopped process left.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from edm.db.outage import log_failure
from edm.events.pipeline import BatchFailed, process_batch, release_requests

log = logging.getLogger(__name__)

# With nothing to wake it, the thread still looks this often (a request logged by another
# instance sharing the database, or one this thread skipped after an error).
IDLE_SECONDS = 1.0


class BatchProcessor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edm-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """A request was logged: process it soon."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the batch in hand, then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failed: list[int] = []  # claimed by a batch that failed, still `processing`
        while not self._stop.is_set():
            self._wake.wait(IDLE_SECONDS)
            self._wake.clear()
            try:
                if failed:
                    release_requests(self.engine, failed)
                    failed = []
                while not self._stop.is_set() and process_batch(self.engine):
                    pass
            except Exception as exc:  # the requests stay logged; the next round retries
                if isinstance(exc, BatchFailed):
                    failed += exc.request_ids
                log_failure(log, "processing webhook requests failed; trying again", exc)
                self._stop.wait(IDLE_SECONDS)
