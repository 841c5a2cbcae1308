"""The console's working pages over a real server, as an operator uses them: a task's
page and its buttons, a new task with its live audience count, services, contacts and
lists with an import, events, and signing in with a user's password."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm import users
from edm.api_tokens import create_token
from edm.audience.lists import create_list
from edm.contacts import add_contacts
from edm.funnels import keeping_funnels
from tests.console_client import CSRF, browser, running_task, server, sign_in
from tests.helpers import edm, scalar, wait_for

__all__ = ["browser", "server"]  # fixtures

FLASH = re.compile(r'class="flash (ok|error)"[^>]*>([^<]*)<')


def admin(db: Engine, browser: httpx.Client, role: str = "admin") -> str:
    """Signed in with a new token of `role`; the session's CSRF value."""
    sign_in(browser, create_token(db, f"ops-{role}", role))
    csrf = CSRF.search(browser.get("/console/tasks").text)
    assert csrf
    return csrf[1]


def flash(answer: httpx.Response) -> tuple[str, str]:
    """The message a form's redirect left on the page it went back to."""
    assert answer.status_code == 200, answer.text[:500]
    found = FLASH.search(answer.text)
    assert found, answer.text[:2000]
    return found[1], found[2].replace("&#39;", "'")


def test_a_task_page_shows_progress_funnel_split_chart_and_eta(
    db: Engine, browser: httpx.Client
) -> None:
    task_id = running_task(db, "spring", emails=6, sent=4)
    now = time.time()
    with db.begin() as conn, keeping_funnels(conn, range(1, 7)):  # facts as events set them
        conn.execute(
            text(
                "UPDATE sub_tasks SET service_id = (SELECT min(id) FROM services),"
                " sent_at = :now - 30, delivered_at = :now WHERE task_id = :t AND status = 'sent'"
            ),
            {"t": task_id, "now": now},
        )
        conn.execute(
            text(
                "UPDATE sub_tasks SET opened_at = :now WHERE id ="
                " (SELECT min(id) FROM sub_tasks WHERE task_id = :t AND status = 'sent')"
            ),
            {"t": task_id, "now": now},
        )
    admin(db, browser)

    page = browser.get(f"/console/tasks/{task_id}")
    assert page.status_code == 200
    html = page.text
    assert "Task 1: spring" in html or f"Task {task_id}: spring" in html
    assert '<progress value="4" max="6">' in html and "4 / 6 (66%)" in html
    assert "ETA:" in html and "store" in html  # the running task's forecast
    # Funnel: 4 sent, all delivered (100%), one opened (25%).
    assert "<td>4</td>" in html and '4 <span class="muted">(100.0%)</span>' in html
    assert '1 <span class="muted">(25.0%)</span>' in html
    # The per-service split: store sent 4.
    assert re.search(r"<td>store</td>\s*<td>4</td>", html)
    # Sends per minute, drawn from the database: the 4 sends of 30 s ago.
    assert "4 sent in the last hour" in html and "<rect" in html
    assert f'hx-get="/console/fragments/tasks/{task_id}"' in html  # live while it runs

    fragment = browser.get(f"/console/fragments/tasks/{task_id}")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "4 sent in the last hour" in fragment.text

    listing = browser.get("/console/tasks").text
    assert f'href="/console/tasks/{task_id}"' in listing and "spring" in listing

    for missing in ("999999", "abc", "0", "99999999999999999999999"):
        assert browser.get(f"/console/tasks/{missing}").status_code == 404


def test_task_buttons_change_the_task_for_an_admin_only(db: Engine, browser: httpx.Client) -> None:
    task_id = running_task(db, "summer", emails=3, sent=0)
    csrf = admin(db, browser)
    page = browser.get(f"/console/tasks/{task_id}").text
    assert f'action="/console/tasks/{task_id}/pause"' in page
    assert f'action="/console/tasks/{task_id}/start"' not in page  # running: no start

    level, text_ = flash(
        browser.post(f"/console/tasks/{task_id}/pause", data={"csrf": csrf}, follow_redirects=True)
    )
    assert (level, text_) == ("ok", f"Task {task_id} paused.")
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "paused"

    # Not allowed in its state: said on the page, nothing changed.
    level, text_ = flash(
        browser.post(f"/console/tasks/{task_id}/pause", data={"csrf": csrf}, follow_redirects=True)
    )
    assert level == "error" and "paused" in text_

    # Without the CSRF value, or with a read session: refused, nothing changed.
    assert browser.post(f"/console/tasks/{task_id}/resume", data={}).status_code == 403
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "paused"
    with httpx.Client(base_url=browser.base_url) as reader:
        read_csrf = admin(db, reader, "read")
        refused = reader.post(f"/console/tasks/{task_id}/resume", data={"csrf": read_csrf})
        assert refused.status_code == 403 and "read token" in refused.text
        assert (
            f'action="/console/tasks/{task_id}/resume"'
            not in reader.get(f"/console/tasks/{task_id}").text
        )
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "paused"

    flash(
        browser.post(f"/console/tasks/{task_id}/cancel", data={"csrf": csrf}, follow_redirects=True)
    )
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "cancelled"
    assert browser.post("/console/tasks/999999/pause", data={"csrf": csrf}).status_code == 404


def test_a_new_task_from_the_form_with_a_live_audience_count(
    db: Engine, browser: httpx.Client
) -> None:
    services_mod.add_service(db, "store", "sandbox", 0.0)
    add_contacts(
        db,
        [
            {"email": f"p{i}@example.com", "fields": {"city": "Paris" if i < 3 else "Rome"}}
            for i in range(5)
        ],
    )
    create_list(db, "news")
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO list_members (list_id, contact_id, added_at)"
                " SELECT (SELECT id FROM lists WHERE name = 'news'), id, 0 FROM contacts"
            )
        )
    csrf = admin(db, browser)
    form = browser.get("/console/tasks/new").text
    assert 'hx-get="/console/fragments/audience-count"' in form and "news" in form

    count = browser.get(
        "/console/fragments/audience-count", params={"lists": "news", "where": 'city = "Paris"'}
    )
    assert count.status_code == 200 and "<b>3</b> contact(s) would receive it" in count.text
    wrong = browser.get("/console/fragments/audience-count", params={"where": "city = "})
    assert "column" in wrong.text and 'class="error"' in wrong.text
    sql = browser.get(
        "/console/fragments/audience-count", params={"where": 'city = "x\' OR 1=1 --"'}
    )
    assert "<b>0</b>" in sql.text  # data, never SQL

    fields = {
        "csrf": csrf,
        "name": "paris only",
        "subject": "Bonjour",
        "text": "Hello from {{ city }}",
        "lists": "news",
        "where": 'city = "Paris"',
        "priority": "2",
        "delivery": "at_most_once",
    }
    created = browser.post("/console/tasks", data=fields, follow_redirects=True)
    level, said = flash(created)
    assert level == "ok" and "draft" in said
    task_id = int(str(created.url).rsplit("/", 1)[1])
    assert scalar(db, f"SELECT count(*) FROM sub_tasks WHERE task_id = {task_id}") == 3
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "draft"
    assert "Preview and test send" in created.text

    # A template naming a field the audience lacks: the form again, saying so, kept filled.
    bad = browser.post("/console/tasks", data={**fields, "text": "Hi {{ zip }}"})
    assert bad.status_code == 400 and "zip" in bad.text and 'value="paris only"' in bad.text
    assert "--allow-missing-fields" not in bad.text
    bad = browser.post("/console/tasks", data={**fields, "priority": "99999999999"})
    assert bad.status_code == 400 and "Priority must be a whole number" in bad.text
    bad = browser.post("/console/tasks", data={**fields, "where": 'city = "Paris" and'})
    assert bad.status_code == 400 and "column" in bad.text
    assert scalar(db, "SELECT count(*) FROM tasks") == 1

    # Preview for a real contact, in a sandboxed frame; a test send through the service.
    preview = browser.get(f"/console/tasks/{task_id}/preview", params={"contact": "p1@example.com"})
    assert preview.status_code == 200 and "Hello from Paris" in preview.text
    assert "<iframe" not in preview.text  # a text-only message is shown as text
    sent = browser.post(
        f"/console/tasks/{task_id}/test-send",
        data={"csrf": csrf, "to": "me@example.com", "contact": "p2@example.com"},
        follow_redirects=True,
    )
    level, said = flash(sent)
    assert level == "ok" and "me@example.com" in said and "store" in said
    refused = browser.post(
        f"/console/tasks/{task_id}/test-send",
        data={"csrf": csrf, "to": "not an address"},
        follow_redirects=True,
    )
    assert flash(refused)[0] == "error"

    flash(
        browser.post(f"/console/tasks/{task_id}/start", data={"csrf": csrf}, follow_redirects=True)
    )
    assert scalar(db, f"SELECT status FROM tasks WHERE id = {task_id}") == "running"


def test_an_html_preview_runs_nothing(db: Engine, browser: httpx.Client) -> None:
    services_mod.add_service(db, "store", "sandbox", 0.0)
    add_contacts(db, [{"email": "a@example.com"}])
    task_id = tasks_mod.create_task(
        db, "h", "s", html="<p>Hi {{ email }}</p><script>alert(1)</script>", text_body="x"
    )
    admin(db, browser)
    page = browser.get(f"/console/tasks/{task_id}/preview").text
    assert "<iframe" in page and "sandbox" in page
    body = browser.get(f"/console/tasks/{task_id}/preview.html")
    assert body.status_code == 200 and "<p>Hi a@example.com</p>" in body.text
    policy = body.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy
    assert "default-src 'none'" in policy
    with httpx.Client(base_url=browser.base_url) as stranger:
        assert stranger.get(f"/console/tasks/{task_id}/preview.html").status_code == 404


def test_services_freeze_unfreeze_change_and_test(db: Engine, browser: httpx.Client) -> None:
    services_mod.add_service(db, "fun", "sandbox", 2.0, daily_quota=100)
    csrf = admin(db, browser)
    page = browser.get("/console/services").text
    assert "fun" in page and "1 every 2 s" in page and 'action="/console/services/freeze"' in page

    said = flash(
        browser.post(
            "/console/services/freeze",
            data={"csrf": csrf, "name": "fun", "reason": "bounces", "for": "30m"},
            follow_redirects=True,
        )
    )
    assert said[0] == "ok" and "for 30m" in said[1]
    with db.connect() as conn:
        frozen, reason, until = conn.execute(
            text("SELECT frozen, frozen_reason, frozen_until FROM services")
        ).one()
    assert frozen and reason == "bounces" and until == pytest.approx(time.time() + 1800, abs=60)
    page = browser.get("/console/services").text
    assert "frozen" in page and 'action="/console/services/unfreeze"' in page

    flash(
        browser.post(
            "/console/services/unfreeze", data={"csrf": csrf, "name": "fun"}, follow_redirects=True
        )
    )
    assert not scalar(db, "SELECT frozen FROM services")

    said = flash(
        browser.post(
            "/console/services/update",
            data={
                "csrf": csrf,
                "name": "fun",
                "interval": "0.5",
                "daily_quota": "7",
                "options": "",
            },
            follow_redirects=True,
        )
    )
    assert said[0] == "ok"
    assert scalar(db, "SELECT interval_seconds FROM services") == 0.5
    assert scalar(db, "SELECT daily_quota FROM services") == 7

    # Said in the form's words, not the command line's.
    said = flash(
        browser.post(
            "/console/services/update",
            data={"csrf": csrf, "name": "fun", "interval": "-1"},
            follow_redirects=True,
        )
    )
    assert said[0] == "error" and said[1].startswith("Seconds between emails must be")

    # The sandbox's outbox is a path on the server: never set from a web page.
    for options in ("outbox=/tmp/anywhere", "no-equals-sign"):
        said = flash(
            browser.post(
                "/console/services/update",
                data={"csrf": csrf, "name": "fun", "options": options},
                follow_redirects=True,
            )
        )
        assert said[0] == "error"
    assert "outbox" not in str(scalar(db, "SELECT options FROM services"))

    said = flash(
        browser.post(
            "/console/services/test",
            data={"csrf": csrf, "name": "fun", "to": "me@example.com"},
            follow_redirects=True,
        )
    )
    assert said[0] == "ok" and "accepted" in said[1]

    said = flash(
        browser.post(
            "/console/services/add",
            data={"csrf": csrf, "name": "fun", "provider": "sandbox", "interval": "1"},
            follow_redirects=True,
        )
    )
    assert said == ("error", "a service named 'fun' already exists")


def test_import_a_csv_into_a_list_with_its_progress_then_export(
    db: Engine, browser: httpx.Client
) -> None:
    csrf = admin(db, browser)
    body = (
        "email,name,city\n"
        + "".join(f"c{i}@example.com,C{i},Paris\n" for i in range(200))
        + "not-an-address,X,Rome\n"
    )
    started = browser.post(
        "/console/contacts/import",
        params={"list": "spring", "file": "spring.csv"},
        content=body.encode(),
        headers={"content-type": "text/csv", "x-csrf-token": csrf},
    )
    assert started.status_code == 202, started.text
    job = re.search(r'hx-get="(/console/fragments/imports/[\w-]+)"', started.text)
    assert job and 'hx-trigger="every 1s"' in started.text
    progress = browser.get(job[1])

    def finished() -> bool:
        nonlocal progress
        progress = browser.get(job[1])
        return "hx-trigger" not in progress.text

    wait_for(finished, 20, "the import to finish")
    assert "spring.csv imported: 200 contact(s) of 201 row(s): 200 new" in progress.text
    assert "<td>202</td>" in progress.text and "not-an-address" in progress.text
    with httpx.Client(base_url=browser.base_url) as other:  # another operator's session
        admin(db, other, "read")
        assert "unknown here" in other.get(job[1]).text
    assert scalar(db, "SELECT count(*) FROM list_members") == 200

    listed = browser.get("/console/contacts", params={"list": "spring", "search": "c19"}).text
    assert "c19@example.com" in listed and "c18@example.com" not in listed
    exported = browser.get("/console/contacts/export.csv", params={"list": "spring"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.text.splitlines()[0] == "email,name,status,city"
    assert len(exported.text.splitlines()) == 201

    # Without the CSRF header nothing is read, let alone imported.
    refused = browser.post(
        "/console/contacts/import", content=b"email\nz@example.com\n", headers={"x-csrf-token": "x"}
    )
    assert refused.status_code == 403
    assert scalar(db, "SELECT count(*) FROM contacts WHERE email = 'z@example.com'") == 0

    # A file that cannot be read: said, nothing imported.
    broken = browser.post(
        "/console/contacts/import",
        content=b"name\nno email column\n",
        headers={"content-type": "text/csv", "x-csrf-token": csrf},
    )
    job = re.search(r'hx-get="(/console/fragments/imports/[\w-]+)"', broken.text)
    if job:
        wait_for(finished, 20, "the import to fail")
    else:
        progress = broken
    assert "nothing imported" in progress.text and 'class="error"' in progress.text
    assert browser.get("/console/fragments/imports/unknown").text.count("unknown here") == 1


def test_lists_made_and_deleted(db: Engine, browser: httpx.Client) -> None:
    csrf = admin(db, browser)
    said = flash(
        browser.post(
            "/console/lists/create",
            data={"csrf": csrf, "name": "vip", "description": "the best"},
            follow_redirects=True,
        )
    )
    assert said == ("ok", "List vip made.")
    page = browser.get("/console/contacts").text
    assert "vip" in page and "the best" in page
    assert (
        flash(
            browser.post(
                "/console/lists/create", data={"csrf": csrf, "name": "vip"}, follow_redirects=True
            )
        )[0]
        == "error"
    )
    said = flash(
        browser.post(
            "/console/lists/delete", data={"csrf": csrf, "name": "vip"}, follow_redirects=True
        )
    )
    assert said[0] == "ok" and scalar(db, "SELECT count(*) FROM lists") == 0


def test_events_listed_and_reprocessed(db: Engine, browser: httpx.Client) -> None:
    from edm.events.intake import log_request
    from edm.events.pipeline import process_request

    services_mod.add_service(db, "s", "sandbox", 0.0)
    body = b'{"event": "delivered", "subtask_id": 424242, "timestamp": 1}'
    process_request(db, log_request(db, "generic", {}, body))
    csrf = admin(db, browser)
    page = browser.get("/console/events", params={"status": "unmatched"}).text
    assert "delivered" in page and "unmatched" in page
    assert 'value="unmatched"' in page  # the "reprocess every unmatched event" button
    said = flash(
        browser.post(
            "/console/events/reprocess",
            data={"csrf": csrf, "status": "unmatched"},
            follow_redirects=True,
        )
    )
    assert said[0] == "ok" and said[1].startswith("Reprocessed 1 event(s)")


def test_signing_in_with_a_user_password(db: Engine, browser: httpx.Client) -> None:
    users.create_user(db, "alice", "correct horse battery", "admin")
    form = browser.get("/login")
    csrf = CSRF.search(form.text)[1]
    wrong = browser.post(
        "/login", data={"user": "alice", "password": "wrong password!!", "csrf": csrf, "next": "/"}
    )
    assert wrong.status_code == 403 and "wrong password" in wrong.text
    nobody = browser.post(
        "/login", data={"user": "bob", "password": "correct horse battery", "csrf": csrf}
    )
    assert nobody.status_code == 403 and "edm_session" not in browser.cookies

    answer = browser.post(
        "/login",
        data={"user": "alice", "password": "correct horse battery", "csrf": csrf, "next": "/"},
    )
    assert answer.status_code == 303
    page = browser.get("/")
    assert page.status_code == 200 and "user alice (admin)" in page.text
    assert scalar(db, "SELECT last_login_at FROM console_users") is not None
    assert "correct horse" not in str(scalar(db, "SELECT password_hash FROM console_users"))

    # A new role or password ends the sessions made before it.
    users.set_role(db, "alice", "read")
    assert browser.get("/").status_code == 303


def test_the_report_page(db: Engine, browser: httpx.Client) -> None:
    task_id = running_task(db, "autumn", emails=4, sent=2)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET sent_at = :now, delivered_at = :now,"
                " service_id = (SELECT min(id) FROM services) WHERE status = 'sent'"
            ),
            {"now": time.time() - 60},
        )
    admin(db, browser, "read")
    page = browser.get("/console/report", params={"since": "1h"})
    assert page.status_code == 200
    assert f'href="/console/tasks/{task_id}">task {task_id} autumn' in page.text
    assert re.search(r"<td>task \d+ autumn</td>\s*<td>2</td>\s*<td>100.0%</td>", page.text)
    assert 'class="current">1h' in page.text


def test_the_user_commands(database: Engine) -> None:
    password = "correct horse battery\n"
    code, out, _ = edm(
        "user", "create", "ann", "--role", "admin", "--password-stdin", stdin=password
    )
    assert code == 0 and "user ann (admin) made" in out
    assert users.sign_in(database, "ann", "correct horse battery") is not None
    for args, stdin, said in (
        (("user", "create", "ann", "--password-stdin"), password, "a user named 'ann' exists"),
        (("user", "create", "bob", "--password-stdin"), "short\n", "12 to 1024 characters"),
        (("user", "create", "a\x01b", "--password-stdin"), password, "control characters"),
        (("user", "password", "ann", "--password-stdin"), "p\x00" * 8 + "\n", "NUL"),
        (("user", "role", "ann", "root"), None, "must be one of admin, read"),
        (("user", "delete", "nobody"), None, "no user named 'nobody'"),
    ):
        code, _, err = edm(*args, stdin=stdin)
        assert code == 1 and said in err and "Traceback" not in err, (args, err)
    assert "correct horse" not in str(scalar(database, "SELECT password_hash FROM console_users"))
    code, out, _ = edm("user", "list", "--json")
    assert (
        code == 0
        and '"name": "ann"' in out
        and "password" not in out.replace("password_set_at", "")
    )
    assert edm("user", "delete", "ann")[0] == 0
    assert users.sign_in(database, "ann", "correct horse battery") is None
