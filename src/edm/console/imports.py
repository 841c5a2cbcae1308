"""Contact imports started from the console: each runs in a thread of this process while
the page polls its progress (the phase and how far into the file it is).

The import itself is `edm contacts import`'s (`import_csv`): same checks, same merge
rules, one transaction. Progress lives in this process only: behind a load balancer the
page must reach the instance that took the upload (a sticky session), or it says the
import is unknown there; the import runs to its end either way.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from edm.contacts import ImportOptions, ImportSummary, Rejection, import_csv

log = logging.getLogger(__name__)
REJECTIONS_SHOWN = 100
KEPT_SECONDS = 3600  # a finished import's result stays readable this long


@dataclass
class ImportJob:
    id: str
    file_name: str
    owner: str  # the session that started it (auth.holder_key): the only one it answers
    started_at: float
    phase: str = "importing"  # importing | done | failed
    done_bytes: int = 0
    size: int = 0
    finished_at: float | None = None
    summary: ImportSummary | None = None
    error: str | None = None
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def percent(self) -> int:
        if self.phase == "done":
            return 100
        return 100 * self.done_bytes // self.size if self.size else 0

    @property
    def running(self) -> bool:
        return self.phase == "importing"


class ImportJobs:
    """The imports of this process, by a random id (it is not a secret, nor guessable)."""

    def __init__(self) -> None:
        self._jobs: dict[str, ImportJob] = {}
        self._lock = threading.Lock()

    def start(
        self, engine: Engine, folder: Path, file_name: str, options: ImportOptions, owner: str
    ) -> ImportJob:
        """Import `folder/upload.csv` in a thread, then delete `folder`."""
        job = ImportJob(secrets.token_urlsafe(12), file_name, owner, time.time())
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run,
            args=(engine, folder, options, job),
            name=f"import-{job.id}",
            daemon=True,
        )
        thread.start()
        return job

    def get(self, job_id: str) -> ImportJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, engine: Engine, folder: Path, options: ImportOptions, job: ImportJob) -> None:
        def progress(phase: str, done: int, size: int) -> None:
            job.phase, job.done_bytes, job.size = phase, done, size

        def keep(rejection: Rejection) -> None:
            if len(job.rejections) < REJECTIONS_SHOWN:
                job.rejections.append(rejection)

        try:
            job.summary = import_csv(
                engine, folder / "upload.csv", options, on_reject=keep, progress=progress
            )
            job.phase = "done"
        except ValueError as exc:  # the file as a whole: nothing was imported
            job.rejections.clear()  # rows of an import that did not happen
            said = str(exc).replace("with --encoding", "in the Encoding box")
            job.error, job.phase = f"{said}; nothing imported", "failed"
        except Exception as exc:  # the database: nothing was imported either (one transaction)
            log.exception("import %s of %s failed", job.id, job.file_name)
            job.error, job.phase = (
                f"the import failed ({type(exc).__name__}); nothing imported",
                "failed",
            )
        finally:
            job.finished_at = time.time()
            shutil.rmtree(folder, ignore_errors=True)

    def _forget_old(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > KEPT_SECONDS:
                del self._jobs[job_id]


def jobs(app: FastAPI) -> ImportJobs:
    """This app's imports (made on first use)."""
    found = getattr(app.state, "console_imports", None)
    if found is None:
        found = app.state.console_imports = ImportJobs()
    return found
