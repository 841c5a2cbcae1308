"""The console in a real browser: headless Chromium (Debian's, through Playwright) against
`edm serve --no-worker` and a separate `edm worker`, both started as a user starts them.
An operator made with `edm user create` runs a campaign from the browser: a service, a
CSV imported into a list, a task for part of it with its audience counted live, preview,
test send, start, progress and ETA, a freeze and a worker outage seen on the banner.

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
LIST = "readers"
USER = "ada"
PASSWORD = "correct horse battery staple"
CONTACTS = 200  # half of them in Paris: the task's audience
# 2.5 sends a second: each 5 s refresh shows the bar further along, and the task (100
# emails, 40 s of sending at the least) is still running when the scenario ends.
INTERVAL = "0.4"
# A refresh of the dashboard (every 5 s) plus the time it waits on: the margin is for a
# loaded 2-core machine.
REFRESH_MS = 15_000
# No heartbeat for this long is a service without a live worker; the workers beat every
# EDM_SUPERVISOR_SECONDS (0.3 s in FAST_ENV).
HEARTBEAT_SECONDS = "3"

OK = re.compile(r"\bok\b")
WARN = re.compile(r"\bwarn\b")
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
def make_an_admin_user(console: Console) -> None:
    console.edm(
        "user", "create", USER, "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"
    )  # fmt: skip


def sign_in_through_the_redirect(console: Console) -> None:
    """`/` without a session goes to the sign-in page; a wrong password is refused there,
    the right one opens the dashboard with every health check passing."""
    page = console.page
    console.go("/")
    expect(page).to_have_url(f"{console.url}/login?next=/")
    expect(page.get_by_role("heading", name="Sign in to edm")).to_be_visible()
    console.shot("sign-in")

    with console.problems.expecting(403, "/login"):
        page.get_by_label("User").fill(USER)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("alert")).to_have_text("Unknown user or wrong password.")
    console.shot("sign-in-refused")

    page.get_by_label("User").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(f"{console.url}/")
    expect(page.locator("nav .who")).to_have_text(f"user {USER} (admin)")
    expect(page.locator("#dashboard")).to_contain_text("No task is running.")
    expect(page.locator("#health-banner")).to_have_class(OK)
    console.shot("dashboard-empty")


def add_a_service(console: Console) -> None:
    """The services page's form; the running worker picks the service up by itself."""
    page = console.page
    nav(console, "Services")
    form = page.locator("form[action='/console/services/add']")
    form.get_by_label("Name").fill(SERVICE)
    form.get_by_label("Provider").select_option("sandbox")
    form.get_by_label("Seconds between emails").fill(INTERVAL)
    form.get_by_role("button", name="Add service").click()
    expect(flash(console)).to_contain_text(f"Service {SERVICE} added")
    expect(page.locator("td", has_text=SERVICE).first).to_be_visible()
    console.shot("services-added")


def import_a_csv_into_a_list(console: Console) -> None:
    """A file chosen in the browser goes up with its progress; the page then follows the
    import itself to its summary, which names the rejected line."""
    page = console.page
    csv = console.log_dir / "readers.csv"
    rows = [
        f"reader{i:04d}@example.com,Reader {i},{'Paris' if i % 2 else 'Rome'}"
        for i in range(CONTACTS)
    ]
    csv.write_text("email,name,city\n" + "\n".join([*rows, "not-an-address,Nobody,Paris"]) + "\n")
    nav(console, "Contacts & lists")
    page.locator("#import-file").set_input_files(csv)
    page.locator("#import-list").fill(LIST)
    page.get_by_role("button", name="Import").click()
    status = page.locator("#import-status")
    expect(status).to_contain_text(
        f"readers.csv imported: {CONTACTS} contact(s) of {CONTACTS + 1} row(s)", timeout=30_000
    )
    expect(status.locator("td").first).to_have_text(str(CONTACTS + 2))  # the bad line
    console.shot("contacts-imported")
    page.get_by_role("link", name="Reload the contacts").click()
    expect(
        page.locator("table", has_text="can be sent to").locator("tr", has_text=LIST)
    ).to_contain_text(str(CONTACTS))


def create_a_task_with_a_live_count(console: Console) -> None:
    """The audience is counted as it is chosen and as the condition is typed."""
    page = console.page
    nav(console, "Tasks")
    page.get_by_role("link", name="New task").click()
    count = page.locator("#audience-count")
    page.get_by_label("Name", exact=True).fill(TASK)
    page.locator("#lists").select_option(LIST)
    expect(count).to_contain_text(f"{CONTACTS} contact(s) would receive it")
    page.locator("#where").press_sequentially('city = "Par', delay=20)
    expect(count.locator(".error")).to_contain_text("column")  # an open quote: pointed at
    page.locator("#where").press_sequentially('is"', delay=20)
    expect(count).to_contain_text(f"{CONTACTS // 2} contact(s) would receive it")
    console.shot("new-task-count")
    page.get_by_label("Subject", exact=True).fill("Spring {{ name }}")
    page.get_by_label("HTML body").fill("<p>Hi {{ name }} in {{ city }}</p>")
    page.get_by_label("Text body").fill("Hi {{ name }} in {{ city }}")
    page.get_by_role("button", name="Create task").click()
    expect(flash(console)).to_contain_text("created as a draft")
    expect(page.locator("h1")).to_contain_text(TASK)
    expect(page.locator("#task-live progress")).to_have_attribute("max", str(CONTACTS // 2))
    console.shot("task-draft")


def preview_and_test_send(console: Console) -> None:
    """The message as a chosen contact gets it (its HTML framed and sandboxed), then one
    copy sent to the operator through the service."""
    page = console.page
    page.locator("#preview-contact").fill("reader0003@example.com")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("h1")).to_have_text("Preview for reader0003@example.com")
    expect(page.locator("pre.preview")).to_have_text("Hi Reader 3 in Paris")
    frame = page.frame_locator("iframe.preview")
    expect(frame.locator("p")).to_have_text("Hi Reader 3 in Paris")
    console.shot("preview")
    page.go_back()
    page.locator("#test-to").fill("me@example.com")
    page.get_by_role("button", name="Send test").click()
    expect(flash(console)).to_contain_text(f"sent to me@example.com through {SERVICE}")
    console.shot("test-sent")


def start_and_see_progress_and_eta(console: Console) -> None:
    """Started from its page, the task's bar moves at each refresh and its ETA shows."""
    page = console.page
    page.get_by_role("button", name="Start").click()
    expect(flash(console)).to_contain_text("started")
    progress = page.locator("#task-live progress")
    expect(progress).not_to_have_attribute("value", "0", timeout=REFRESH_MS)
    before = int(progress.get_attribute("value") or 0)
    expect(progress).not_to_have_attribute("value", str(before), timeout=REFRESH_MS)
    expect(page.locator("#eta")).to_contain_text("ends", timeout=REFRESH_MS)
    expect(page.locator("svg.chart rect").first).to_be_attached(timeout=REFRESH_MS)
    console.shot("task-running")


def freeze_and_unfreeze_with_the_buttons(console: Console) -> None:
    """A frozen service is a warning on every page's banner; unfrozen, all is well again."""
    page = console.page
    nav(console, "Services")
    page.get_by_label(f"reason to freeze {SERVICE}").fill("checking the list")
    page.get_by_role("button", name=f"Freeze {SERVICE}").click()
    expect(flash(console)).to_contain_text(f"Service {SERVICE} frozen")
    expect(page.locator("td.state").first).to_contain_text("frozen")
    expect(page.locator("td.state").first).to_contain_text("checking the list")
    expect(page.locator("#health-banner")).to_have_class(WARN)
    console.shot("service-frozen")
    page.get_by_role("button", name=f"Unfreeze {SERVICE}").click()
    expect(flash(console)).to_contain_text(f"Service {SERVICE} unfrozen")
    nav(console, "Dashboard")  # refreshed every 5 s: the banner follows the checks
    expect(page.locator("#health-banner")).to_have_class(OK, timeout=REFRESH_MS)


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


def nav(console: Console, name: str) -> None:
    console.page.locator("nav").get_by_role("link", name=name, exact=True).click()


def flash(console: Console) -> Locator:
    """The message a form leaves on the page it goes back to."""
    return console.page.locator("p.flash")


def live_workers(console: Console) -> Locator:
    page = console.page
    services = page.locator("#dashboard section", has=page.get_by_role("heading", name="Services"))
    return services.locator("tr", has_text=SERVICE).locator("td").nth(3)


# -- the scenario -------------------------------------------------------------------------
# On PostgreSQL only: what the browser adds (htmx refreshes, the banner swapped in out of
# band, redirects, cookies, the CSP) is the same on either database, and every query
# behind these pages runs on both in test_console.py. The scenario spends its time waiting
# on 5 s refreshes: a second database would double it for nothing new. PostgreSQL is
# where `edm serve` and separate workers are meant to share one database.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True, scope="module")
def test_an_operator_runs_a_campaign_from_the_browser(console: Console) -> None:
    make_an_admin_user(console)
    sign_in_through_the_redirect(console)
    add_a_service(console)
    import_a_csv_into_a_list(console)
    create_a_task_with_a_live_count(console)
    preview_and_test_send(console)
    start_and_see_progress_and_eta(console)
    freeze_and_unfreeze_with_the_buttons(console)
    kill_the_worker_and_see_it_critical(console)
    start_a_worker_and_see_it_recover(console)
    sign_out(console)
