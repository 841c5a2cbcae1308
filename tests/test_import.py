"""`edm contacts import`: nothing lost, nothing half-done, nothing wiped, on both databases.

Each test drives the CLI in process and asserts the contacts table afterwards, exactly.
"""

from __future__ import annotations

import csv
import os
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from edm.contacts.merge import MergeRules
from edm.db.models import Contact
from tests.helpers import edm

LONG = "x" * 200_000


def contacts(engine: Engine) -> dict[str, tuple]:
    """Every contact as (name, fields, status, status_reason), by address."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Contact.email, Contact.name, Contact.fields, Contact.status, Contact.status_reason
            )
        )
        return {r.email: (r.name, r.fields, r.status, r.status_reason) for r in rows}


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def numbered(count: int, header: str = "email,name") -> list[bytes]:
    """`count` data lines user00000@example.com..., each a line of its own (line = i + 2)."""
    lines = [header.encode() + b"\n"]
    lines += [f"user{i:05d}@example.com,User {i}\n".encode() for i in range(count)]
    return lines


def imported(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    return edm("contacts", "import", str(write(tmp_path / "c.csv", text)), *args)


@pytest.fixture
def ann(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    """An existing contact with a name and two fields."""
    code, _, err = imported(tmp_path, "email,name,city,plan\nann@example.com,Ann,Oslo,gold\n")
    assert code == 0, err


# -- merging with existing contacts ---------------------------------------------------------


def test_reimport_with_unsubscribed_keeps_name_and_fields_and_suppresses(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    code, out, err = imported(tmp_path, "email,status\nann@example.com,unsubscribed\n")
    assert code == 0, err
    assert contacts(engine) == {
        "ann@example.com": (
            "Ann",
            {"city": "Oslo", "plan": "gold"},
            "unsubscribed",
            "import: unsubscribed",
        )
    }
    assert "1 updated" in out and "1 suppressed" in out


def test_active_status_never_reactivates_without_the_flag(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    assert imported(tmp_path, "email,status\nann@example.com,bounced\n")[0] == 0
    code, out, _ = imported(tmp_path, "email,status\nann@example.com,active\n")
    assert code == 0
    assert contacts(engine)["ann@example.com"][2:] == ("bounced", "import: bounced")
    assert "1 unchanged" in out and "1 kept suppressed" in out
    # Another suppressed status does not replace the reason it already has either.
    assert imported(tmp_path, "email,status\nann@example.com,unsubscribed\n")[0] == 0
    assert contacts(engine)["ann@example.com"][2:] == ("bounced", "import: bounced")

    code, out, _ = imported(
        tmp_path, "email,status\nann@example.com,Active\n", "--allow-reactivate"
    )
    assert code == 0
    assert contacts(engine)["ann@example.com"] == (
        "Ann",
        {"city": "Oslo", "plan": "gold"},
        "active",
        None,
    )
    assert "1 reactivated" in out


def test_absent_column_and_empty_cell_change_nothing_and_fields_merge_by_key(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    code, out, _ = imported(tmp_path, "email,city\nann@example.com,Bergen\n")
    assert code == 0 and "1 updated" in out
    assert contacts(engine)["ann@example.com"] == (
        "Ann",
        {"city": "Bergen", "plan": "gold"},
        "active",
        None,
    )
    code, out, _ = imported(tmp_path, "email,name,plan,team\nann@example.com,,,\n")
    assert code == 0
    # Empty cells keep the values; a field the contact lacks is added, empty.
    assert contacts(engine)["ann@example.com"] == (
        "Ann",
        {"city": "Bergen", "plan": "gold", "team": ""},
        "active",
        None,
    )
    assert imported(tmp_path, "email,name,plan,team\nann@example.com,,,\n")[1].count("1 unchanged")


def test_overwrite_empty_clears_the_name_and_fields_named(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    code, _, _ = imported(tmp_path, "email,name,plan\nann@example.com,,\n", "--overwrite-empty")
    assert code == 0
    assert contacts(engine)["ann@example.com"] == (
        None,
        {"city": "Oslo", "plan": ""},
        "active",
        None,
    )


def test_status_column_on_new_contacts(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    code, _, _ = imported(tmp_path, "email,status\nnew@example.com,complained\nok@example.com,\n")
    assert code == 0
    assert contacts(engine) == {
        "new@example.com": (None, {}, "complained", "import: complained"),
        "ok@example.com": (None, {}, "active", None),
    }


# -- file-level problems: nothing imported ------------------------------------------------


def test_unterminated_quote_mid_file_imports_nothing(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(2999)
    lines[1500] = b'broken@example.com,"Broken\n'  # line 1501
    before = contacts(engine)
    code, out, err = imported(tmp_path, b"".join(lines))
    assert code == 1
    assert "line 1501:" in err and "unterminated quote" in err
    assert len(err.strip().splitlines()) == 1 and "imported" not in out
    assert contacts(engine) == before


def test_rows_rejected_before_a_file_problem_are_not_reported(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    # One pass: the bad row of line 11 is met before the broken quote of line 1501, and the
    # import that does not happen leaves no report of it.
    lines = numbered(2999)
    lines[10] = b"not-an-address,Nobody\n"
    lines[1500] = b'broken@example.com,"Broken\n'
    report = tmp_path / "rejected.csv"
    before = contacts(engine)
    code, out, err = imported(tmp_path, b"".join(lines), "--report", str(report))
    assert code == 1 and "imported" not in out
    assert err.strip().splitlines() == [
        "error: line 1501: a quoted field that starts on this line is never closed"
        " (an unterminated quote); nothing imported"
    ]
    assert not report.exists()
    assert contacts(engine) == before


def test_a_report_that_is_not_a_file_of_its_own_is_left_alone(
    ann: None, engine: Engine, tmp_path: Path
) -> None:
    # `--report /dev/stdout` is a pipe or a device, not a report to remove when the import
    # fails: here a named pipe, read by a thread as a terminal would.
    pipe = tmp_path / "report.pipe"
    os.mkfifo(pipe)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_bytes()))
    reader.start()
    lines = numbered(200)
    lines[10] = b"not-an-address,Nobody\n"
    lines[150] = b'broken@example.com,"Broken\n'
    code, _, err = imported(tmp_path, b"".join(lines), "--report", str(pipe))
    reader.join(10)
    assert code == 1 and "line 151:" in err
    assert stat.S_ISFIFO(pipe.stat().st_mode)  # still there
    assert read and read[0].startswith(b"line,reason,value")


def test_undecodable_byte_names_its_line_and_imports_nothing(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(2999)
    lines[2000] = "jose@example.com,José\n".encode("latin-1")  # line 2001
    path = write(tmp_path / "c.csv", b"".join(lines))
    code, _, err = edm("contacts", "import", str(path))
    assert code == 1
    assert "line 2001: byte 0xe9 is not utf-8" in err and "--encoding" in err
    assert contacts(engine) == {}

    code, out, _ = edm("contacts", "import", str(path), "--encoding", "latin-1")
    assert code == 0 and "3000 new" not in out and "2999 new" in out
    assert contacts(engine)["jose@example.com"][0] == "José"


def test_nul_byte_is_one_short_line_without_contact_data(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(2000)
    lines[700] = b"secret@example.com,Sec\x00ret Person\n"  # line 701
    code, out, err = imported(tmp_path, b"".join(lines))
    assert code == 1
    assert err.startswith("error: line 701: a NUL character")
    assert len(err.strip().splitlines()) == 1 and len(err) < 300
    assert "secret" not in out + err and "Traceback" not in err
    assert contacts(engine) == {}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("email,name,Email,city,city", "line 1: columns 1 and 3 are both `email`"),
        ("email,city, City ", "line 1: columns 2 and 3 are both `city`"),
        ("email,,city", "line 1: column 2 of the header has no name"),
        ("name,city", "no `email` column"),
    ],
)
def test_ambiguous_header_imports_nothing(
    env: dict[str, str], engine: Engine, tmp_path: Path, header: str, message: str
) -> None:
    code, _, err = imported(tmp_path, f"{header}\nann@example.com,a,b,c,d\n")
    assert code == 1 and message in err
    assert contacts(engine) == {}


def test_empty_or_missing_file_imports_nothing(env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = imported(tmp_path, "\n\n")
    assert code == 1 and "is empty" in err
    code, _, err = edm("contacts", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "cannot read" in err


# -- row-level problems: that row only ----------------------------------------------------


def test_huge_field_rejects_its_row_and_keeps_the_rows_after_it(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(2999)
    lines[2500] = f"big@example.com,{LONG}\n".encode()  # line 2501
    code, out, err = imported(tmp_path, b"".join(lines))
    assert code == 1
    assert "line 2501: `name` is 200,000 characters long" in err
    assert "2998 new" in out and "1 rejected" in out
    assert "x" * 41 not in out + err
    stored = contacts(engine)
    assert len(stored) == 2998 and "big@example.com" not in stored
    assert stored["user02998@example.com"] == ("User 2998", {}, "active", None)


def test_overlong_line_rejects_its_row_only(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    text = 'email,name\na@example.com,A\nb@example.com,"' + "y" * 1_100_000 + '"\nc@example.com,C\n'
    code, out, err = imported(tmp_path, text)
    assert code == 1 and "line 3: a line over 1,000,000 bytes long" in err
    assert "y" * 41 not in out + err
    assert set(contacts(engine)) == {"a@example.com", "c@example.com"}


def test_bad_addresses_are_rejected_by_line(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    text = (
        "email,name\n"
        "user..dots@example.com,A\n"
        "user@example..com,B\n"
        "user@-example-.com,C\n"
        "user@exa_mple.com,D\n"
        "good@example.com,E\n"
        ",F\n"
        "more@example.com,G,extra\n"
    )
    code, out, err = imported(tmp_path, text)
    assert code == 1
    for line in (2, 3, 4, 5):
        assert f"line {line}: not an email address" in err
    assert "line 7: no email address" in err
    assert "line 8: more fields than the header has columns (3, not 2)" in err
    assert "1 new" in out and "6 rejected" in out
    assert contacts(engine) == {"good@example.com": ("E", {}, "active", None)}


def test_unknown_status_is_a_row_rejection(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    code, _, err = imported(tmp_path, "email,status\na@example.com,gone\nb@example.com,Bounced\n")
    assert code == 1 and "line 2: unknown status" in err and "'gone'" in err
    assert contacts(engine) == {"b@example.com": (None, {}, "bounced", "import: bounced")}


def test_case_variants_are_one_contact_and_later_rows_merge_onto_earlier(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    text = (
        "email,name,city,status\n"
        "Ann@Example.COM,Ann,Oslo,\n"
        "bob@example.com,Bob,Rome,\n"
        "ANN@example.com,,Bergen,\n"
        "ann@EXAMPLE.com,Annie,,unsubscribed\n"
    )
    code, out, _ = imported(tmp_path, text)
    assert code == 0
    assert "2 new" in out and "2 duplicated within the file" in out
    assert contacts(engine) == {
        "ann@example.com": ("Annie", {"city": "Bergen"}, "unsubscribed", "import: unsubscribed"),
        "bob@example.com": ("Bob", {"city": "Rome"}, "active", None),
    }


def test_duplicates_across_chunks_are_counted(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(2500)
    lines.append(b"user00003@example.com,Again\n")
    code, out, _ = imported(tmp_path, b"".join(lines))
    assert code == 0 and "2500 new" in out and "1 duplicated within the file" in out
    assert contacts(engine)["user00003@example.com"][0] == "Again"
    code, out, _ = imported(tmp_path, b"".join(lines))  # "User 3", then "Again" once more
    assert "0 new, 1 updated, 2499 unchanged; 1 duplicated" in out
    assert contacts(engine)["user00003@example.com"][0] == "Again"


# -- format: delimiter, encoding ---------------------------------------------------------------


def test_semicolon_file_is_sniffed_and_bom_accepted(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    text = "\ufeffEmail;Name;City\nann@example.com;Smith, Ann;Oslo\nbob@example.com;Bob;Rome\n"
    code, out, _ = imported(tmp_path, text)
    assert code == 0 and "delimiter ';'" in out
    assert contacts(engine) == {
        "ann@example.com": ("Smith, Ann", {"city": "Oslo"}, "active", None),
        "bob@example.com": ("Bob", {"city": "Rome"}, "active", None),
    }


def test_delimiter_option(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    code, _, _ = imported(tmp_path, "email|name\nann@example.com|Ann\n", "--delimiter", "|")
    assert code == 0 and contacts(engine)["ann@example.com"][0] == "Ann"
    code, _, _ = imported(tmp_path, "email\tname\nbob@example.com\tBob\n", "--delimiter", "tab")
    assert code == 0 and contacts(engine)["bob@example.com"][0] == "Bob"


# -- reporting ---------------------------------------------------------------------------------


def test_report_file_lists_every_rejection(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    lines = numbered(100)
    for i in range(2, 62, 2):  # 30 bad rows
        lines[i - 1] = f"bad{i}-{LONG[:60]},X\n".encode()
    report = tmp_path / "rejected.csv"
    code, out, err = imported(tmp_path, b"".join(lines), "--report", str(report))
    assert code == 1 and "70 new" in out and "30 rejected" in out
    assert err.count("not an email address") == 20 and "10 more rejected" in err
    with report.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["line", "reason", "value"]
    assert [int(r[0]) for r in rows[1:]] == list(range(2, 62, 2))
    assert all(len(r[2]) == 41 and r[2].endswith("…") for r in rows[1:])


def test_a_database_error_is_one_line_and_imports_nothing(
    ann: None, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from edm.contacts import store

    def broken(conn, now) -> None:  # type: ignore[no-untyped-def]
        raise OperationalError(
            "INSERT secret@example.com", {"email": "secret"}, Exception("disk full")
        )

    monkeypatch.setattr(store, "insert_new", broken)
    before = contacts(engine)
    code, out, err = imported(tmp_path, "email,name\nsecret@example.com,S\nann@example.com,Ann B\n")
    assert code == 1
    assert err.strip() == "error: database error: disk full; nothing imported"
    assert "secret" not in out + err
    assert contacts(engine) == before


# -- reactivate --------------------------------------------------------------------------------


def test_reactivate_command(ann: None, engine: Engine, tmp_path: Path) -> None:
    assert imported(tmp_path, "email,status\nann@example.com,bounced\nbob@example.com,\n")[0] == 0
    code, out, err = edm("contacts", "reactivate", "ANN@example.com", "bob@example.com")
    assert code == 0
    assert "reactivated ann@example.com (was bounced: import: bounced)" in out
    assert "bob@example.com is already active" in out
    assert contacts(engine)["ann@example.com"][2:] == ("active", None)

    assert imported(tmp_path, "email,status\nann@example.com,unsubscribed\n")[0] == 0
    code, out, err = edm("contacts", "reactivate", "ann@example.com", "nobody@example.com")
    assert code == 1 and "nobody@example.com" in err
    assert contacts(engine)["ann@example.com"][2:] == ("active", None)


@pytest.mark.parametrize("twice", [False, True], ids=["named-once", "named-twice"])
def test_a_contact_added_meanwhile_is_merged_not_duplicated(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twice: bool
) -> None:
    """PostgreSQL only: on SQLite the import holds the write lock, so nothing can race it.
    Another transaction adds the address after the import looked for it: in the set-based
    merge (an address named once) and in the merge in file order (named twice)."""
    from sqlalchemy import text

    from edm.contacts import import_csv, store
    from edm.db import open_database

    engine = open_database(pg_url)
    raced: list[bool] = []

    def race() -> None:
        """Once: a second insert of the address would wait for the import's lock on it."""
        if raced:
            return
        raced.append(True)
        with engine.begin() as other:
            other.execute(
                text(
                    "INSERT INTO contacts (email, name, fields, status, created_at,"
                    " updated_at) VALUES ('race@example.com', 'Other', '{\"team\": \"x\"}',"
                    " 'active', 0, 0)"
                )
            )

    insert_new, lock = store.insert_new, store.lock_contacts

    def race_then_insert(conn, now):  # type: ignore[no-untyped-def]
        race()
        return insert_new(conn, now)

    def lock_then_race(conn, emails):  # type: ignore[no-untyped-def]
        found = lock(conn, emails)
        race()
        return found

    monkeypatch.setattr(store, "insert_new", race_then_insert)
    monkeypatch.setattr(store, "lock_contacts", lock_then_race)
    rows = "race@example.com,Racer,Oslo\n" * (2 if twice else 1)
    path = write(tmp_path / "c.csv", "email,name,city\n" + rows)
    summary = import_csv(engine, path)
    assert (summary.counts.new, summary.counts.updated) == (0, 1)
    assert summary.counts.duplicated == (1 if twice else 0)
    assert contacts(engine) == {
        "race@example.com": ("Racer", {"team": "x", "city": "Oslo"}, "active", None)
    }
    engine.dispose()


# -- the staged merge against the rules applied row by row -----------------------------------


def by_the_rules(before: dict[str, tuple], path: Path, rules: MergeRules) -> tuple:
    """What importing `path` onto the contacts `before` gives by `merge` folded over its good
    rows in file order: the contacts, the counts, the parsed rows and the good ones."""
    from edm.contacts.csvfile import open_csv
    from edm.contacts.merge import ContactState, merge
    from edm.contacts.rows import ContactRow, Layout, parse_row
    from edm.contacts.writer import plan_chunk

    source = open_csv(path)
    layout = Layout.of(source.columns)
    parsed = [parse_row(record, layout) for record in source.records()]
    good = [row for row in parsed if isinstance(row, ContactRow)]

    def states() -> dict[str, ContactState]:
        return {
            email: ContactState(email, name, dict(fields), status, reason, id=0)
            for email, (name, fields, status, reason) in before.items()
        }

    after = states()
    for row in good:
        after[row.email], _ = merge(after.get(row.email), row, rules)
    expected = {s.email: (s.name, s.fields, s.status, s.status_reason) for s in after.values()}
    return expected, plan_chunk(good, states(), set(), rules).counts, parsed, good


@pytest.mark.parametrize(
    ("overwrite_empty", "allow_reactivate"), [(False, False), (True, False), (False, True)]
)
def test_staged_merge_gives_what_the_rules_give_row_by_row(
    env: dict[str, str],
    engine: Engine,
    tmp_path: Path,
    overwrite_empty: bool,
    allow_reactivate: bool,
) -> None:
    """A file of addresses named once and many times (case variants), bad lines, empty
    cells and statuses, onto existing contacts some of which are suppressed: the contacts,
    the counts and the list are those of `merge` folded over the good rows in file order."""
    import random

    from edm.contacts import ImportOptions, import_csv
    from edm.db.models import ContactList, ListMember

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    statuses = ["", "", "", "active", "bounced", "unsubscribed", "Active"]
    existing = ["email,name,city,plan,status"] + [
        f"p{i}@example.com,P {i},{rng.choice(['Oslo', ''])},gold,{rng.choice(statuses)}"
        for i in range(0, 120, 2)
    ]
    first = import_csv(engine, write(tmp_path / "first.csv", "\n".join(existing) + "\n"))
    assert first.rejected == 0
    before = contacts(engine)

    lines = ["email,name,city,status,team"]
    for _ in range(600):
        i = rng.randrange(150) if rng.random() < 0.7 else rng.randrange(150, 1000)
        email = f"p{i}@example.com"
        email = email.upper() if rng.random() < 0.2 else email
        if rng.random() < 0.03:
            lines.append(f"not-an-address-{i},X,,,")
            continue
        if rng.random() < 0.02:
            lines.append(f"{email},too,many,fields,here,really")
            continue
        name = rng.choice(["", "Ann", "Bob", f"N{i}"])
        city = rng.choice(["", "Rome", "Oslo"])
        lines.append(f"{email},{name},{city},{rng.choice(statuses)},{rng.choice(['', 't1'])}")
    path = write(tmp_path / "second.csv", "\n".join(lines) + "\n")
    options = ImportOptions(
        overwrite_empty=overwrite_empty, allow_reactivate=allow_reactivate, list_name="l"
    )
    summary = import_csv(engine, path, options)

    rules = MergeRules(overwrite_empty, allow_reactivate)
    expected, counts, parsed, good = by_the_rules(before, path, rules)
    assert contacts(engine) == expected
    assert summary.counts == counts
    assert summary.rows == len(parsed) and summary.rejected == len(parsed) - len(good)
    assert summary.counts.duplicated > 0 and summary.counts.new > 0
    with engine.connect() as conn:
        members = conn.execute(
            select(Contact.email)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(ContactList.name == "l")
        )
        assert set(members.scalars()) == {row.email for row in good}


@pytest.mark.parametrize(
    ("overwrite_empty", "allow_reactivate"), [(False, False), (True, False), (False, True)]
)
def test_the_same_fields_again_still_change_names_and_statuses(
    engine: Engine, tmp_path: Path, overwrite_empty: bool, allow_reactivate: bool
) -> None:
    """A file imported again, some names and statuses edited and some addresses named
    twice: the rows whose fields are as stored (merged without reading them key by key)
    change the contacts and the counts exactly as the rules say."""
    import random

    from edm.contacts import ImportOptions, import_csv

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    statuses = ["", "", "active", "bounced", "unsubscribed"]
    rows = [
        (f"s{i}@example.com", f"S {i}", rng.choice(["Oslo", "Rome", ""]), rng.choice(statuses))
        for i in range(80)
    ]
    first = write(
        tmp_path / "first.csv",
        "email,name,city,status\n"
        + "".join(f"{email},{name},{city},{status}\n" for email, name, city, status in rows),
    )
    import_csv(engine, first)
    before = contacts(engine)

    lines = ["email,name,city,status"]
    for email, name, city, status in rows + rng.sample(rows, 10):
        if rng.random() < 0.3:
            name = rng.choice(["", "Renamed"])
        if rng.random() < 0.3:
            status = rng.choice(statuses)
        lines.append(f"{email.upper() if rng.random() < 0.2 else email},{name},{city},{status}")
    again = write(tmp_path / "again.csv", "\n".join(lines) + "\n")
    rules = MergeRules(overwrite_empty, allow_reactivate)
    summary = import_csv(
        engine,
        again,
        ImportOptions(overwrite_empty=overwrite_empty, allow_reactivate=allow_reactivate),
    )

    expected, counts, _, _ = by_the_rules(before, again, rules)
    assert contacts(engine) == expected
    assert summary.counts == counts
    assert counts.unchanged > 0 and counts.updated > 0
