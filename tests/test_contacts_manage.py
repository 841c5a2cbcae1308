"""`edm contacts add|show|update|delete|list|export`, on both databases.

Each test drives the CLI in process; bad input is one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from edm.contacts import add_contacts
from edm.contacts.manage import delete_contact
from edm.db import open_database
from edm.db.models import Contact
from edm.db.queries import hold_expansion_lock
from edm.funnels import keeping_funnels
from edm.task_views import task_funnel
from tests.helpers import child_env, edm, funnels_kept, make_contacts, scalar


def contacts(engine: Engine) -> dict[str, tuple]:
    """Every contact as (name, fields, status, status_reason), by address."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Contact.email, Contact.name, Contact.fields, Contact.status, Contact.status_reason
            )
        )
        return {r.email: (r.name, r.fields, r.status, r.status_reason) for r in rows}


def ok(*args: str) -> str:
    code, out, err = edm(*args)
    assert code == 0, err
    return out


def shown(email: str) -> dict:
    return json.loads(ok("contacts", "show", email, "--json"))


def failed(*args: str) -> str:
    """The one line a refused command writes on stderr."""
    code, _, err = edm(*args)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def ann(env: dict[str, str], engine: Engine) -> None:
    """Lists news and vip; ann@example.com on news with a name and a field."""
    ok("list", "create", "news")
    ok("list", "create", "vip")
    out = ok(
        "contacts", "add", "Ann@Example.COM", "--name", "Ann", "--field", "City=Oslo",
        "--list", "news",
    )  # fmt: skip
    assert "contact ann@example.com added (id " in out


# -- add, show, update -------------------------------------------------------------------------


def test_add_then_show(ann: None) -> None:
    detail = shown("ANN@example.com")
    assert {k: detail[k] for k in ("email", "name", "fields", "status", "lists")} == {
        "email": "ann@example.com",
        "name": "Ann",
        "fields": {"city": "Oslo"},
        "status": "active",
        "lists": ["news"],
    }
    assert detail["sub_tasks"] == {} and detail["last_sent_at"] is None
    out = ok("contacts", "show", "ann@example.com")
    assert "field city: Oslo" in out and "lists: news" in out and "status: active" in out


def test_update_changes_name_fields_and_lists(ann: None) -> None:
    out = ok(
        "contacts", "update", "ann@example.com", "--name", "Ann B", "--field", "plan= gold ",
        "--unset", "city", "--add-list", "vip", "--remove-list", "news",
    )  # fmt: skip
    assert "contact ann@example.com updated" in out
    detail = shown("ann@example.com")
    assert (detail["name"], detail["fields"], detail["lists"]) == (
        "Ann B",
        {"plan": "gold"},
        ["vip"],
    )
    ok("contacts", "update", "ann@example.com", "--name", "", "--field", "plan=silver")
    detail = shown("ann@example.com")
    assert (detail["name"], detail["fields"]) == (None, {"plan": "silver"})


def test_update_never_changes_the_status(ann: None, engine: Engine, tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("email,status\nann@example.com,unsubscribed\n")
    ok("contacts", "import", str(csv))
    ok("contacts", "update", "ann@example.com", "--field", "plan=gold")
    assert contacts(engine)["ann@example.com"][2:] == ("unsubscribed", "import: unsubscribed")
    assert "reactivate" in ok("contacts", "update", "--help")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "not-an-email"], "'not-an-email' is not an email address"),
        (["add", "ANN@example.com"], "ann@example.com already exists: `edm contacts update"),
        (["add", "bob@example.com", "--list", "nope"], "--list: no list named 'nope'"),
        (["add", "bob@example.com", "--list", "nope"], "`edm list create NAME`"),
        (["add", "bob@example.com", "--field", "oops"], "--field must be KEY=VALUE, not 'oops'"),
        (["add", "bob@example.com", "--field", "=x"], "--field key must not be empty"),
        (["add", "bob@example.com", "--field", "Email=x"], "not a field but the contact's own"),
        (["add", "bob@example.com", "--name", "a\nb"], "--name must not contain control"),
        (["show", "nobody@example.com"], "no contact has the address 'nobody@example.com'"),
        (["show", "not-an-email"], "no contact has the address 'not-an-email'"),
        (["update", "nobody@example.com", "--name", "X"], "no contact has the address"),
        (["update", "ann@example.com"], "nothing to change: give --name, --field"),
        (["update", "ann@example.com", "--field", "k"], "--field must be KEY=VALUE"),
        (["update", "ann@example.com", "--unset", "nope"], "--unset: ann@example.com has no"),
        (["update", "ann@example.com", "--add-list", "nope"], "--add-list: no list named 'nope'"),
        (["update", "ann@example.com", "--remove-list", "no"], "--remove-list: no list named"),
        (["update", "ann@example.com", "--field", "a=1", "--unset", "A"], "both name 'A'"),
        (["delete", "nobody@example.com", "--yes"], "no contact has the address"),
        (["list", "--status", "gone"], "--status must be one of active, bounced"),
        (["list", "--list", "nope"], "--list: no list named 'nope'"),
        (["list", "--limit", "0"], "--limit must be a whole number from 1 to 1000, not 0"),
        (["list", "--limit", "1001"], "--limit must be a whole number from 1 to 1000"),
        (["list", "--after", "-1"], "--after must be a whole number from 0"),
        (["show", "\udcff@example.com"], "EMAIL is not valid text"),
        (["list", "--list", "\udcff"], "--list is not valid text"),
        (["list", "--search", "\udcff"], "--search is not valid text"),
        (["export", "--status", "gone"], "--status must be one of"),
        (["export", "--list", "nope"], "--list: no list named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    ann: None, engine: Engine, args: list[str], message: str
) -> None:
    before = contacts(engine)
    assert message in failed("contacts", *args)
    assert contacts(engine) == before


# -- list --------------------------------------------------------------------------------------


def test_search_is_a_literal_case_insensitive_substring(env: dict[str, str]) -> None:
    for email, name in [
        ("a_b@example.com", "Plain"),
        ("axb@example.com", "Ann Smith"),
        ("pct%@example.com", "100% Real"),
        ("other@example.com", "50 off"),
    ]:
        ok("contacts", "add", email, "--name", name)

    def found(search: str) -> list[str]:
        page = json.loads(ok("contacts", "list", "--search", search, "--json"))
        return [c["email"] for c in page["contacts"]]

    assert found("_") == ["a_b@example.com"]
    assert found("%") == ["pct%@example.com"]
    assert found("0%") == ["pct%@example.com"]
    assert found("ANN") == ["axb@example.com"]
    assert found("A_B") == ["a_b@example.com"]
    assert found("\\") == []
    assert "axb@example.com" in ok("contacts", "list", "--search", "smith")


def test_cursor_pages_visit_every_contact_once(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 23)
    seen: list[int] = []
    after = 0
    while True:
        page = json.loads(ok("contacts", "list", "--limit", "5", "--after", str(after), "--json"))
        seen += [c["id"] for c in page["contacts"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == sorted(set(seen)) and len(seen) == 23
    out = ok("contacts", "list", "--limit", "5")
    assert "user00004@example.com" in out and f"more: --after {seen[4]}" in out


def test_list_filters_by_list_and_status(ann: None, tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("email,status\nbob@example.com,bounced\ncy@example.com,\n")
    ok("contacts", "import", str(csv), "--list", "vip")

    def emails(*args: str) -> list[str]:
        page = json.loads(ok("contacts", "list", "--json", *args))
        return [c["email"] for c in page["contacts"]]

    assert emails("--list", "vip") == ["bob@example.com", "cy@example.com"]
    assert emails("--list", "vip", "--status", "Active") == ["cy@example.com"]
    assert emails("--status", "bounced") == ["bob@example.com"]


# -- export ------------------------------------------------------------------------------------

TRICKY = (
    "email,name,status,city,note,plan\n"
    'ann@example.com,Ann,,Oslo,"a, b ""quoted""",gold\n'
    'bob@example.com,,bounced,Rome,"two\nlines",\n'
    "zoë@example.com,Zoë Ünïcode,unsubscribed,,,free\n"
)


def test_export_imports_back_as_it_was(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    ok("contacts", "import", str(_write(tmp_path / "in.csv", TRICKY)))
    ok("contacts", "add", "cy@example.com", "--field", "Extra=only mine", "--field", "pct=1%_2")
    before = contacts(engine)
    first = ok("contacts", "export")
    assert first.splitlines()[0] == "email,name,status,city,extra,note,pct,plan"
    out = ok("contacts", "export", str(tmp_path / "out.csv"))
    assert "exported 4 contact(s)" in out
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == first

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM contacts"))
    out = ok("contacts", "import", str(tmp_path / "out.csv"))
    assert "4 new" in out
    after = contacts(engine)
    # A contact lacking a column another has gets it empty, as from any import.
    assert after == {
        email: (name, {k: fields.get(k, "") for k in after[email][1]}, status, reason)
        for email, (name, fields, status, reason) in before.items()
    }
    assert ok("contacts", "export") == first


def test_export_filters_by_list_and_status(env: dict[str, str], tmp_path: Path) -> None:
    ok("contacts", "import", str(_write(tmp_path / "in.csv", TRICKY)), "--list", "news")
    ok("contacts", "add", "cy@example.com", "--field", "tier=1")
    news = ok("contacts", "export", "--list", "news").splitlines()
    assert news[0] == "email,name,status,city,note,plan"  # cy's `tier` is not among them
    assert [line.split(",")[0] for line in news[1:] if "@" in line] == [
        "ann@example.com",
        "bob@example.com",
        "zoë@example.com",
    ]
    assert ok("contacts", "export", "--status", "bounced").splitlines()[1].startswith("bob@")
    assert ok("contacts", "export", "--status", "complained") == "email,name,status\n"


def test_export_never_overwrites_a_file_without_force(env: dict[str, str], tmp_path: Path) -> None:
    ok("contacts", "add", "ann@example.com")
    target = _write(tmp_path / "keep.csv", "precious")
    assert "keep.csv exists" in failed("contacts", "export", str(target))
    failed("contacts", "export", str(target), "--force", "--status", "gone")
    assert target.read_text() == "precious"
    assert not list(tmp_path.glob("*.part"))
    ok("contacts", "export", str(target), "--force")
    assert target.read_text().startswith("email,name,status\nann@example.com")
    assert "cannot write" in failed("contacts", "export", str(tmp_path / "no" / "dir.csv"))
    (tmp_path / "dir").mkdir()
    assert "cannot write" in failed("contacts", "export", str(tmp_path / "dir"), "--force")
    failed("contacts", "export", str(tmp_path / "x.csv"), "--status", "gone")
    assert not (tmp_path / "x.csv").exists()


def test_export_refuses_field_keys_that_would_import_back_as_another_column(
    env: dict[str, str], engine: Engine
) -> None:
    add_contacts(engine, [{"email": "a@example.com", "fields": {"City": "x", "city": "y"}}])
    err = failed("contacts", "export")
    assert "the field 'city' would be imported back as the field 'City'" in err
    ok("contacts", "update", "a@example.com", "--unset", "City")
    assert ok("contacts", "export") == "email,name,status,city\na@example.com,,active,y\n"


def test_export_into_a_closed_pipe_ends_quietly(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 5000)
    reader = subprocess.Popen(
        [sys.executable, "-m", "edm", "contacts", "export"],
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stdout.readline() == b"email,name,status\n"
    reader.stdout.close()  # as `| head -1` does
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and b"Traceback" not in err and b"Exception" not in err


# -- delete ------------------------------------------------------------------------------------


def test_delete_is_refused_while_a_sub_task_is_sending(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    ok("contacts", "add", "bob@example.com", "--list", "news")
    ok(
        "service", "add", "a", "--provider", "sandbox", "--interval", "0",
        "--option", f"outbox={tmp_path / 'o.jsonl'}",
    )  # fmt: skip
    task = json.loads(
        ok("task", "create", "t", "--subject", "s", "--text", "x", "--services", "a", "--json")
    )
    ann_id = shown("ann@example.com")["id"]
    assert shown("ann@example.com")["sub_tasks"] == {"pending": 1}
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET status = 'sending' WHERE contact_id = :c"), {"c": ann_id}
        )
    err = failed("contacts", "delete", "ann@example.com", "--yes")
    assert f"being sent right now (task {task['id']}): try again in a few seconds" in err
    assert "ann@example.com" in contacts(engine)

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET status = 'sent' WHERE contact_id = :c"), {"c": ann_id}
        )
    assert "confirm with --yes" in failed("contacts", "delete", "ann@example.com")
    assert "ann@example.com" in contacts(engine)
    assert "contact ann@example.com deleted" in ok("contacts", "delete", "ANN@example.com", "--yes")
    assert set(contacts(engine)) == {"bob@example.com"}
    assert scalar(engine, "SELECT count(*) FROM sub_tasks WHERE contact_id = :c", c=ann_id) == 0
    assert scalar(engine, "SELECT count(*) FROM list_members WHERE contact_id = :c", c=ann_id) == 0
    assert scalar(engine, "SELECT count(*) FROM sub_tasks") == 1  # bob's stays
    assert "no contact has the address" in failed("contacts", "delete", "ann@example.com", "--yes")


def test_deleting_a_contact_takes_its_facts_out_of_the_task_funnel(
    ann: None, engine: Engine
) -> None:
    ok("contacts", "add", "bob@example.com", "--list", "news")
    task = json.loads(ok("task", "create", "t", "--subject", "s", "--text", "x", "--json"))
    ann_id = shown("ann@example.com")["id"]
    with engine.begin() as conn, keeping_funnels(conn, [1, 2]):  # both delivered, ann opened
        conn.execute(text("UPDATE sub_tasks SET status = 'sent', delivered_at = 1"))
        conn.execute(
            text("UPDATE sub_tasks SET opened_at = 2 WHERE contact_id = :c"), {"c": ann_id}
        )
    assert task_funnel(engine, task["id"])["delivered"] == 2
    ok("contacts", "delete", "ann@example.com", "--yes")
    funnel = task_funnel(engine, task["id"])
    assert (funnel["delivered"], funnel["opened"]) == (1, 0)
    assert funnels_kept(engine)


def test_delete_waits_for_a_task_being_made_and_takes_its_new_sub_task(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No foreign key ties a sub-task to its contact: a task made while the contact is
    # deleted must not leave a sub-task for a contact that is gone.
    engine = open_database(pg_url)
    add_contacts(engine, [{"email": "ann@example.com"}])
    ann_id = scalar(engine, "SELECT id FROM contacts")
    with engine.connect() as expansion:
        with expansion.begin():
            expansion.execute(
                text("INSERT INTO tasks (name, subject, text_body, created_at)"
                     " VALUES ('t', 's', 'x', 0)")
            )  # fmt: skip
            hold_expansion_lock(expansion, exclusive=False)
            expansion.execute(
                text("INSERT INTO sub_tasks (task_id, contact_id, idempotency_key)"
                     " SELECT max(id), :c, 'k' FROM tasks"), {"c": ann_id},
            )  # fmt: skip
            deleting = threading.Thread(target=delete_contact, args=(engine, "ann@example.com"))
            deleting.start()
            deleting.join(0.5)
            assert deleting.is_alive()  # waits for the expansion's commit
        deleting.join(10)
    assert not deleting.is_alive()
    assert scalar(engine, "SELECT count(*) FROM contacts") == 0
    assert scalar(engine, "SELECT count(*) FROM sub_tasks") == 0
    engine.dispose()


def test_deleting_a_suppressed_contact_says_its_address_is_forgotten(
    ann: None, tmp_path: Path
) -> None:
    ok(
        "contacts",
        "import",
        str(_write(tmp_path / "s.csv", "email,status\nann@example.com,bounced\n")),
    )
    code, out, err = edm("contacts", "delete", "ann@example.com", "--yes")
    assert code == 0 and "deleted" in out
    assert "it was bounced: importing the address again makes it an active contact" in err


def test_delete_asks_on_a_terminal(ann: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edm.cli import app
    from edm.cli import contacts as cli_contacts

    monkeypatch.setattr(cli_contacts, "_can_ask", lambda: True)
    args = ["contacts", "delete", "ann@example.com"]
    answered_no = CliRunner().invoke(app, args, input="n\n")
    assert answered_no.exit_code == 1 and "not deleted" in answered_no.stderr
    assert "delete ann@example.com (active, 0 sub-task(s))? [y/N]" in answered_no.stderr
    assert shown("ann@example.com")["email"] == "ann@example.com"
    answered_yes = CliRunner().invoke(app, args, input="y\n")
    assert answered_yes.exit_code == 0 and "deleted" in answered_yes.stdout
    assert failed("contacts", "show", "ann@example.com")


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path
