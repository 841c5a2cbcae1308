"""Helpers for the browser tests: Playwright for Python driving Debian's Chromium
(`apt-get install chromium`; Playwright's own browser download is never used) against a
real `edm serve` and a real `edm worker`, each started as a user starts it.

Without Chromium or Playwright the browser tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import Worker, wait_for
from tests.test_serve import free_port

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Request, Response

# Debian's package; CI installs it (.ci/run).
CHROMIUM = "/usr/bin/chromium"
LOAD_FAILED = re.compile(
    r"Failed to load resource: the server responded with a status of (?P<status>\d+) .*"
)
HTMX_FAILED = re.compile(r"Response Status Error Code (?P<status>\d+) from (?P<path>\S+), .*")


def missing(what: str) -> None:
    """Skip locally, fail in CI: CI never passes without running a test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: CI never skips the browser tests")
    pytest.skip(what)


def chromium_path() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        missing("Chromium is not installed (apt-get install chromium)")
    return str(path)


def screenshots_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$EDM_SCREENSHOTS, else `screenshots` in pytest's base temporary folder."""
    chosen = os.environ.get("EDM_SCREENSHOTS")
    folder = Path(chosen).resolve() if chosen else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Server:
    """`edm serve --port N --no-worker` as a user runs it, its output kept in files."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = log_dir / "serve.err"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edm", "serve", "--port", str(port), "--no-worker"],
            env=env,
            stdout=(log_dir / "serve.out").open("w"),
            stderr=self.stderr_path.open("w"),
        )
        try:
            wait_for(self._live, 20, "edm serve to answer")
        except AssertionError:
            self.stop()
            raise
        assert self.process.poll() is None, self.stderr_path.read_text()[-3000:]

    def _live(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/live", timeout=1).is_success
        except httpx.HTTPError:
            return self.process.poll() is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def edm_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """`python -m edm ARGS` in a process of its own, as an operator types it: its stdout.
    Anything but exit 0 fails the test."""
    done = subprocess.run(
        [sys.executable, "-m", "edm", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"edm {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


@dataclass
class Problems:
    """What a page did wrong: console errors, uncaught exceptions, and requests to our own
    origin that failed or were answered with a status >= 400 that the test did not expect."""

    origin: str
    seen: list[str] = field(default_factory=list)
    expected: list[tuple[int, str]] = field(default_factory=list)  # (status, path)
    excused: list[tuple[int, str]] = field(default_factory=list)  # expected ones that came

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"uncaught exception: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    @contextmanager
    def expecting(self, status: int, path: str) -> Iterator[None]:
        """Within the block, one answer `status` to `path` (and Chromium's console line
        about it) is what the test wants, not a problem."""
        self.expected.append((status, path))
        yield
        if (status, path) not in self.excused:
            self.seen.append(f"expected {status} for {path}, which never came")

    def _own(self, url: str) -> bool:
        return url == self.origin or url.startswith(self.origin + "/")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if not self._about_an_expected_answer(message.text, url):
            self.seen.append(f"console error: {message.text} (at {url or 'unknown'})")

    def _about_an_expected_answer(self, text: str, url: str) -> bool:
        """Chromium logs every answer >= 400 as a console error, and htmx logs those to its
        own requests once more: lines excused with the answer they are about."""
        if (said := LOAD_FAILED.fullmatch(text)) and self._own(url):
            return (int(said["status"]), urlsplit(url).path) in self.excused
        if said := HTMX_FAILED.fullmatch(text):
            return (int(said["status"]), urlsplit(said["path"]).path) in self.excused
        return False

    def _failed(self, request: Request) -> None:
        failure = request.failure or ""
        # A poll cut short by a navigation (sign-out, a link) is the browser's doing.
        if self._own(request.url) and failure != "net::ERR_ABORTED":
            self.seen.append(f"request failed: {request.method} {request.url}: {failure}")

    def _response(self, response: Response) -> None:
        if response.status < 400 or not self._own(response.url):
            return
        key = (response.status, urlsplit(response.url).path)
        if key in self.expected:
            self.expected.remove(key)
            self.excused.append(key)
            return
        self.seen.append(f"HTTP {response.status}: {response.request.method} {response.url}")


@dataclass
class Console:
    """One operator's browser tab on the console, and the installation behind it: the
    server, its workers, the CLI. Scenario steps take it and leave it on a page."""

    page: Page
    url: str
    env: dict[str, str]
    log_dir: Path
    shots: Path
    workers: list[Worker]
    problems: Problems
    shot_count: int = 0
    token: str = ""

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def shot(self, name: str) -> Path:
        """A full-page screenshot, numbered in the order taken."""
        self.shot_count += 1
        path = self.shots / f"{self.shot_count:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def edm(self, *args: str, stdin: str | None = None) -> str:
        return edm_cli(self.env, *args, stdin=stdin)

    def start_worker(self) -> Worker:
        worker = Worker(self.env, self.log_dir)
        self.workers.append(worker)
        return worker

    def kill_workers(self) -> None:
        """SIGKILL: no goodbye, the heartbeats just stop."""
        for worker in self.workers:
            worker.kill()

    def path(self) -> str:
        return urlsplit(self.page.url).path
