"""Lists and audiences: who a task sends to, counted before and kept with the task."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, text

from tests.helpers import edm, scalar

PEOPLE = """email,name,city,age,plan,status
ann@example.com,Ann,Paris,34,pro,
bob@example.com,Bob,Lyon,17,free,
cid@example.com,Cid,Paris,51,free,
dee@example.com,Dee,Paris,29,pro,unsubscribed
eve@example.com,Eve,Oslo,,pro,
"""


def imported(tmp_path: Path, body: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / f"c{abs(hash(body))}.csv"
    path.write_text(body)
    return edm("contacts", "import", str(path), *args)


def recipients(engine: Engine, task_id: int) -> dict[str, str]:
    """email → sub-task status."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.email, s.status FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id"
                " WHERE s.task_id = :t"
            ),
            {"t": task_id},
        )
        return dict(rows.all())


def create(*args: str) -> tuple[int, dict | str]:
    code, out, err = edm(
        "task", "create", "t", "--subject", "Hi {{ name }}", "--text", "x", *args, "--json"
    )
    return code, (json.loads(out) if code == 0 else err)


def count(*args: str) -> dict:
    code, out, err = edm("audience", "count", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_lists_are_made_filled_by_import_and_listed(env: dict[str, str], tmp_path: Path) -> None:
    assert edm("list", "create", "customers", "--description", "paying")[0] == 0
    code, _, err = edm("list", "create", "customers")
    assert code == 1 and "already exists" in err
    code, out, _ = imported(tmp_path, PEOPLE, "--list", "spring")
    assert code == 0 and "on list spring (a new list)" in out
    # Imported again: members are not doubled; a rejected row is on no list.
    code, out, _ = imported(tmp_path, PEOPLE + "not-an-address,X,,,,\n", "--list", "spring")
    assert code == 1 and "(a new list)" not in out
    code, out, _ = edm("list", "list", "--json")
    shown = {row["name"]: row for row in json.loads(out)}
    assert (shown["spring"]["members"], shown["spring"]["active"]) == (5, 4)
    assert (shown["customers"]["members"], shown["customers"]["description"]) == (0, "paying")


def test_an_audience_is_counted_before_a_task_and_is_what_the_task_gets(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    assert edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")[0] == 0
    imported(tmp_path, PEOPLE, "--list", "all")
    imported(tmp_path, "email\nbob@example.com\ncid@example.com\n", "--list", "blocked")
    imported(tmp_path, "email\nann@example.com\nzed@example.com\n", "--list", "extra")

    assert count() == {"lists": [], "exclude": [], "where": None, "receive": 5, "suppressed": 1}
    assert count("--lists", "all,extra", "--exclude", "blocked")["receive"] == 3  # ann eve zed
    paris_adults = count("--lists", "all", "--where", 'city = "Paris" and age >= 18')
    assert (paris_adults["receive"], paris_adults["suppressed"]) == (2, 1)  # ann cid; dee
    assert paris_adults["where"] == 'city = "Paris" and age >= 18'

    code, task = create("--lists", "all", "--exclude", "blocked", "--where", 'plan = "pro"')
    assert code == 0, task
    assert (task["lists"], task["exclude"], task["where"]) == (["all"], ["blocked"], 'plan = "pro"')
    assert recipients(engine, task["id"]) == {
        "ann@example.com": "pending",
        "dee@example.com": "skipped",  # suppressed: on the list, never sent to
        "eve@example.com": "pending",
    }
    code, out, _ = edm("task", "show", str(task["id"]))
    assert 'audience   all, less blocked, where plan = "pro"' in out


def test_a_draft_takes_the_lists_members_as_they_are_when_it_starts(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")
    imported(tmp_path, "email\nann@example.com\n", "--list", "l")
    code, task = create("--lists", "l")
    assert code == 0 and task["total"] == 1
    imported(tmp_path, "email\nbob@example.com\n", "--list", "l")
    imported(tmp_path, "email\ncid@example.com\n")  # on no list
    assert edm("task", "start", str(task["id"]))[0] == 0
    assert set(recipients(engine, task["id"])) == {"ann@example.com", "bob@example.com"}


def test_templates_are_checked_against_the_audience_only(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")
    imported(tmp_path, "email,city\nann@example.com,Paris\n", "--list", "with-city")
    imported(tmp_path, "email\nbob@example.com\n")  # no city, on no list
    code, out, err = edm(
        "task", "create", "t", "--subject", "x", "--text", "{{ city }}", "--lists", "with-city"
    )
    assert code == 0, err
    code, _, err = edm("task", "create", "t", "--subject", "x", "--text", "{{ city }}")
    assert code == 1 and "1 contact lacks field `city`" in err


def test_bad_audiences_are_one_line_errors(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")
    imported(tmp_path, PEOPLE, "--list", "all")
    code, _, err = edm("audience", "count", "--where", 'city = "Paris" and')
    assert code == 1 and "at column" in err and "^" in err
    code, _, err = edm("audience", "count", "--lists", "all,nope")
    assert code == 1 and "no list named 'nope'" in err
    code, err = create("--lists", "all", "--where", 'city = "Rome"')
    assert code == 1 and "no active contact in the audience" in err
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0  # nothing kept


def test_a_condition_is_data_never_sql(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    hostile = "x'); DELETE FROM contacts; --"
    imported(tmp_path, f'email,note\nann@example.com,"{hostile}"\nbob@example.com,plain\n')
    where = 'note = "' + hostile.replace('"', '\\"') + '"'
    assert count("--where", where)["receive"] == 1
    assert count("--where", 'note contains "%"')["receive"] == 0  # no wildcard
    assert scalar(engine, "SELECT count(*) FROM contacts") == 2


def test_a_list_in_use_is_not_deleted(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")
    imported(tmp_path, PEOPLE, "--list", "all")
    code, task = create("--lists", "all")
    code, _, err = edm("list", "delete", "all")
    assert code == 1 and f"task {task['id']}" in err
    assert edm("task", "cancel", str(task["id"]))[0] == 0
    code, out, _ = edm("list", "delete", "all")
    assert code == 0 and "5 members" in out
    assert scalar(engine, "SELECT count(*) FROM contacts") == 5  # the contacts stay
    code, _, err = edm("list", "delete", "all")
    assert code == 1 and "no list named 'all'" in err
