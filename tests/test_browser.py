"""The console in a real browser: headless Chromium (Debian's, through Playwright) against
`edm serve --no-worker` and a separate `edm worker`, both started as a user starts them,
and the installation driven through the `edm` CLI as an operator drives it.

One ordered scenario of small steps, each leaving the tab on a page for the next. Every
page a step visits is screenshotted (`$EDM_SCREENSHOTS`, else `screenshots` in pytest's
base temporary folder; the summary prints where). A console error, an uncaught exception,
or a request to the server that failed or got a status >= 400 that the step did not
expect fails the test, listed at teardown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.browser import Console, Problems, Server, chromium_path, missing, screenshots_folder
from tests.helpers import FAST_ENV, Worker, child_env

try:
    from playwright.sync_api import Browser, Locator, expect, sync_playwright
except ImportError:  # a dev dependency: only an install without the dev group lacks it
    sync_playwright = None

SERVICE = "sandbox-a"
TASK = "spring-sale"
CONTACTS = 200
# 5 sends a second: each 5 s refresh of the dashboard shows the bar further along, and
# the task is still running when the scenario ends (40 s of sending at the least).
INTERVAL = "0.2"
# A refresh of the dashboard (every 5 s) plus the time it waits on: the margin is for a
# loaded 2-core machine.
REFRESH_MS = 15_000
# No heartbeat for this long is a service without a live worker; the workers beat every
# EDM_SUPERVISOR_SECONDS (0.3 s in FAST_ENV).
HEARTBEAT_SECONDS = "3"

OK = re.compile(r"\bok\b")
CRITICAL = re.compile(r"\bcritical\b")


@dataclass
class Installation:
    url: str
    env: dict[str, str]
    log_dir: Path
    workers: list[Worker]
    name: str  # the database: sqlite or postgresql


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if sync_playwright is None:
        missing("playwright is not installed (uv sync: it is a dev dependency)")
    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def installation(db: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """`edm serve --no-worker` and one `edm worker` on the module's database (emptied).
    The environment is the `env` fixture's (FAST_ENV and the database) for the whole module,
    with health thresholds short enough to watch an outage come and go."""
    name = db.dialect.name
    log_dir = tmp_path_factory.mktemp(f"browser-{name}")
    env = child_env(
        {
            **os.environ,
            **FAST_ENV,
            "EDM_DATABASE_URL": db.url.render_as_string(hide_password=False),
        },
        EDM_HEALTH_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS,
        EDM_HEALTH_CACHE_SECONDS="0.5",
    )
    server = Server(env, log_dir)
    workers = [Worker(env, log_dir)]
    try:
        yield Installation(server.url, env, log_dir, workers, name)
    finally:
        for worker in workers:
            worker.kill()
        server.stop()


@pytest.fixture
def console(
    chromium: Browser,
    installation: Installation,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: pytest.RecordProperty,
) -> Iterator[Console]:
    """A fresh tab (no cookies), watched for problems; they fail the test at teardown."""
    shots = screenshots_folder(tmp_path_factory) / installation.name
    shots.mkdir(exist_ok=True)
    record_property("screenshots", str(shots))  # the terminal summary lists it
    print(f"browser screenshots: {shots}")
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems = Problems(installation.url)
    problems.watch(page)
    tab = Console(
        page,
        installation.url,
        installation.env,
        installation.log_dir,
        shots,
        installation.workers,
        problems,
    )
    try:
        yield tab
    finally:
        tab.shot("last")  # where the tab was when the test ended, passed or not
        context.close()
    if problems.seen:
        pytest.fail(
            "the browser met problems:\n" + "\n".join(f"  - {seen}" for seen in problems.seen),
            pytrace=False,
        )


# -- steps --------------------------------------------------------------------------------
def make_an_admin_token(console: Console) -> None:
    out = console.edm("token", "create", "ops", "--role", "admin")
    console.token = out.split()[0]
    assert console.token.startswith("edm_"), out


def sign_in_through_the_redirect(console: Console) -> None:
    """`/` without a session goes to the sign-in page; a wrong token is refused there, the
    admin token opens the dashboard with every health check passing."""
    page = console.page
    console.go("/")
    expect(page).to_have_url(f"{console.url}/login?next=/")
    expect(page.get_by_role("heading", name="Sign in to edm")).to_be_visible()
    console.shot("sign-in")

    with console.problems.expecting(403, "/login"):
        page.get_by_label("API token").fill("edm_not-a-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("Unknown or revoked token.")
    console.shot("sign-in-refused")

    page.get_by_label("API token").fill(console.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{console.url}/")
    expect(page.locator("nav .who")).to_have_text("token ops (admin)")
    expect(page.locator("#dashboard")).to_contain_text("No task is running.")
    expect(page.locator("#health-banner")).to_have_class(OK)
    console.shot("dashboard-empty")


def start_a_campaign(console: Console) -> None:
    """A sandbox service, contacts and a started task, all from the CLI: the open dashboard
    shows them at its next refresh, without a reload."""
    console.edm("service", "add", SERVICE, "--provider", "sandbox", "--interval", INTERVAL)
    csv = console.log_dir / "contacts.csv"
    rows = (f"reader{i:04d}@example.com,Reader {i}" for i in range(CONTACTS))
    csv.write_text("email,name\n" + "\n".join(rows) + "\n")
    console.edm("contacts", "import", str(csv))
    console.edm(
        "task", "create", TASK, "--subject", "Spring {{ name }}", "--text", "Hi {{ name }}",
        "--start",
    )  # fmt: skip
    dashboard = console.page.locator("#dashboard")
    expect(dashboard.locator("tr", has_text=TASK)).to_be_visible(timeout=REFRESH_MS)
    expect(live_workers(console)).to_have_text("1", timeout=REFRESH_MS)
    expect(dashboard.locator("tr", has_text=SERVICE)).to_contain_text("1 every 0.2 s")
    console.shot("dashboard-campaign")


def see_the_progress_move(console: Console) -> None:
    """The bar advances from one refresh to the next."""
    progress = task_progress(console)
    before = int(progress.get_attribute("value") or 0)
    expect(progress).not_to_have_attribute("value", str(before), timeout=REFRESH_MS)
    after = int(progress.get_attribute("value") or 0)
    assert before < after < CONTACTS, (before, after)
    expect(progress).to_have_attribute("max", str(CONTACTS))
    row = console.page.locator("#dashboard tr", has_text=TASK)
    expect(row.locator("td.progress span")).to_contain_text(f" / {CONTACTS}")
    console.shot("dashboard-progress")


def kill_the_worker_and_see_it_critical(console: Console) -> None:
    """SIGKILL every worker: the banner turns critical naming the service, the service has
    no live worker, and the banner's link leads to the health page saying so."""
    page = console.page
    console.kill_workers()
    banner = page.locator("#health-banner")
    expect(banner).to_have_class(CRITICAL, timeout=REFRESH_MS)
    expect(banner).to_contain_text(f"{SERVICE} has no live worker")
    expect(live_workers(console)).to_have_text("0", timeout=REFRESH_MS)
    console.shot("dashboard-critical")

    banner.get_by_role("link", name="health checks").click()
    expect(page).to_have_url(f"{console.url}/console/health")
    check = page.locator("tr", has_text="services_running")
    expect(check.locator(".badge")).to_have_text("critical")
    expect(check).to_contain_text(f"{SERVICE} has no live worker")
    console.shot("health-critical")
    page.locator("nav").get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(f"{console.url}/")


def start_a_worker_and_see_it_recover(console: Console) -> None:
    """A new `edm worker`: the banner is back to ok and the bar moves on."""
    progress = task_progress(console)
    stopped_at = progress.get_attribute("value")  # nothing sends while no worker lives
    console.start_worker()
    banner = console.page.locator("#health-banner")
    expect(banner).to_have_class(OK, timeout=REFRESH_MS)
    expect(banner).to_have_text("All health checks pass.")
    expect(live_workers(console)).to_have_text("1")
    expect(progress).not_to_have_attribute("value", str(stopped_at), timeout=REFRESH_MS)
    console.shot("dashboard-recovered")


def sign_out(console: Console) -> None:
    """Sign out ends the session: the dashboard sends to the sign-in page again."""
    page = console.page
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{console.url}/login")
    console.go("/")
    expect(page).to_have_url(f"{console.url}/login?next=/")
    console.shot("signed-out")


def task_progress(console: Console) -> Locator:
    return console.page.locator("#dashboard tr", has_text=TASK).locator("progress")


def live_workers(console: Console) -> Locator:
    return console.page.locator("#dashboard tr", has_text=SERVICE).locator("td").nth(3)


# -- the scenario -------------------------------------------------------------------------
# On PostgreSQL only: what the browser adds (htmx refreshes, the banner swapped in out of
# band, redirects, cookies, the CSP) is the same on either database, and every query
# behind these pages runs on both in test_console.py. The scenario spends its time waiting
# on 5 s refreshes: a second database would double it for nothing new. PostgreSQL is
# where `edm serve` and separate workers are meant to share one database.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True, scope="module")
def test_an_operator_follows_a_campaign_through_a_worker_outage(console: Console) -> None:
    make_an_admin_token(console)
    sign_in_through_the_redirect(console)
    start_a_campaign(console)
    see_the_progress_move(console)
    kill_the_worker_and_see_it_critical(console)
    start_a_worker_and_see_it_recover(console)
    sign_out(console)
