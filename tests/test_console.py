"""The web console over a real server: sign-in, sessions, CSRF, the pages and the banner."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.api_tokens import create_token, revoke_token
from tests.console_client import CSRF, browser, cookie_header, running_task, server, sign_in

__all__ = ["browser", "server"]  # fixtures


def test_signing_in_shows_the_dashboard(db: Engine, browser: httpx.Client) -> None:
    running_task(db, "spring")
    tasks_mod.create_task(db, "autumn-draft", "hello", text_body="x")  # not running: not shown
    token = create_token(db, "ops", "admin")

    answer = sign_in(browser, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = cookie_header(answer, "edm_session")
    assert cookie and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "max-age=43200" in cookie.lower() and "secure" not in cookie.lower()  # plain http
    assert token not in cookie and token not in answer.text

    page = browser.get("/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith(
        "default-src 'self'; style-src 'self'; script-src 'self'"
    )
    assert "spring" in page.text and '<progress value="3" max="4">' in page.text
    assert "autumn-draft" not in page.text
    assert "3 / 4 (75%)" in page.text
    assert "store" in page.text and "1 every 31 s" in page.text and "0 / 5,000" in page.text
    assert 'hx-get="/console/fragments/dashboard"' in page.text
    assert 'hx-trigger="every 5s"' in page.text
    assert "<script>" not in page.text and " style=" not in page.text  # CSP-clean

    fragment = browser.get("/console/fragments/dashboard")
    assert fragment.status_code == 200 and "spring" in fragment.text
    assert "<html" not in fragment.text and 'hx-swap-oob="true"' in fragment.text

    health = browser.get("/console/health")
    assert health.status_code == 200 and "services_running" in health.text
    assert "Nothing has been repaired yet" in health.text


def test_a_wrong_or_revoked_token_gets_no_session(db: Engine, browser: httpx.Client) -> None:
    token = create_token(db, "old", "read")
    revoke_token(db, "old")
    for wrong in ("edm_not-a-token", token, ""):
        answer = sign_in(browser, wrong)
        assert answer.status_code == 403 and "Unknown or revoked token" in answer.text
        assert cookie_header(answer, "edm_session") is None
    assert "edm_session" not in browser.cookies

    # A form that did not come from the sign-in page (no pre-session cookie) is refused.
    live = create_token(db, "ops", "admin")
    with httpx.Client(base_url=browser.base_url) as stranger:
        forged = stranger.post("/login", data={"token": live, "csrf": "x", "next": "/"})
        assert forged.status_code == 403 and cookie_header(forged, "edm_session") is None


def test_pages_need_a_live_session(db: Engine, browser: httpx.Client) -> None:
    for path in ("/", "/console/health"):
        answer = browser.get(path, params={"x": "1"})
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next={path}%3Fx%3D1"
    fragment = browser.get("/console/fragments/dashboard")
    assert fragment.status_code == 401 and fragment.headers["hx-redirect"] == "/login?next=/"

    # `next` is followed only to a path of this site.
    token = create_token(db, "ops", "read")
    assert sign_in(browser, token, "/console/health").headers["location"] == "/console/health"
    for elsewhere in ("//evil.example", "https://evil.example/", "/\\evil.example"):
        assert sign_in(browser, token, elsewhere).headers["location"] == "/"

    # A session ends when its token is revoked, and a forged cookie is no session.
    assert browser.get("/").status_code == 200
    revoke_token(db, "ops")
    assert browser.get("/").status_code == 303
    browser.cookies.clear()
    browser.cookies.set("edm_session", "eyJ0b2tlbl9oYXNoIjoieCJ9.AAAA")
    assert browser.get("/").status_code == 303


def test_logout_needs_the_csrf_value(db: Engine, browser: httpx.Client) -> None:
    sign_in(browser, create_token(db, "ops", "admin"))
    page = browser.get("/")
    csrf = CSRF.search(page.text)
    assert csrf and 'action="/logout"' in page.text

    for data in ({}, {"csrf": "not-it"}):
        refused = browser.post("/logout", data=data)
        assert refused.status_code == 403 and "Forbidden" in refused.text
        assert browser.get("/").status_code == 200

    answer = browser.post("/logout", data={"csrf": csrf[1]})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert "edm_session" not in browser.cookies
    assert browser.get("/").status_code == 303


def test_the_banner_turns_red_on_a_critical_check(db: Engine, browser: httpx.Client) -> None:
    sign_in(browser, create_token(db, "ops", "read"))
    assert 'class="banner ok"' in browser.get("/").text

    services_mod.add_service(db, "lonely", "sandbox", 1.0)  # no worker: no heartbeat
    page = browser.get("/").text
    assert 'class="banner critical"' in page
    assert "services_running" in page and "lonely has no running worker" in page

    services_mod.set_frozen(db, "lonely", True, reason="bounces <b>high</b>")
    page = browser.get("/").text
    assert "bounces &lt;b&gt;high&lt;/b&gt;" in page and "<b>high</b>" not in page


def test_static_files_and_escaping(db: Engine, browser: httpx.Client) -> None:
    script = browser.get("/console/static/htmx.min.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "htmx" in script.text[:200]
    css = browser.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # Linked from every page: without it a browser asks for /favicon.ico, a 404.
    icon = browser.get("/console/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"

    running_task(db, "<script>alert(1)</script>")
    sign_in(browser, create_token(db, "ops", "admin"))
    for path in ("/", "/console/fragments/dashboard"):
        page = browser.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>alert(1)" not in page


def test_a_database_outage_is_a_page(
    db: Engine, browser: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from edm.console import pages

    sign_in(browser, create_token(db, "ops", "read"))

    def down(*_: object, **__: object) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(pages, "service_reports", down)
    answer = browser.get("/")
    assert answer.status_code == 503 and "text/html" in answer.headers["content-type"]
    assert "Database unavailable" in answer.text
