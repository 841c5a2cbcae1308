"""The command line: names, flags, JSON shapes and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edm.config import get_settings
from tests.helpers import edm


def test_full_flow_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    csv = tmp_path / "contacts.csv"
    csv.write_text("email,name,city\nann@example.com,Ann,Oslo\nbob@example.com,Bob,Rome\n")
    html = tmp_path / "body.html"
    html.write_text("<p>Hello {{ name }} from {{ city }}</p>")
    assert edm("db", "upgrade")[0] == 0
    assert (
        edm(
            "service",
            "add",
            "a",
            "--provider",
            "sandbox",
            "--interval",
            "0.5",
            "--daily-quota",
            "100",
            "--option",
            f"outbox={tmp_path / 'o.jsonl'}",
        )[0]
        == 0
    )
    assert edm("contacts", "import", str(csv))[0] == 0
    code, out, _ = edm(
        "task",
        "create",
        "spring",
        "--subject",
        "Hi {{ name }}",
        "--html",
        str(html),
        "--services",
        "a",
        "--from",
        "News <news@example.com>",
        "--json",
    )
    assert code == 0
    created = json.loads(out)
    assert created["status"] == "draft" and created["total"] == 2
    assert edm("task", "start", str(created["id"]))[0] == 0

    code, out, _ = edm("task", "show", str(created["id"]), "--json")
    shown = json.loads(out)
    assert {k: shown[k] for k in ("id", "name", "status", "total", "counts")} == {
        "id": created["id"],
        "name": "spring",
        "status": "running",
        "total": 2,
        "counts": {"pending": 2},
    }
    code, out, _ = edm("service", "list", "--json")
    services = json.loads(out)
    assert services[0]["name"] == "a" and services[0]["interval_seconds"] == 0.5
    assert edm("service", "freeze", "a", "--reason", "checking")[0] == 0
    assert json.loads(edm("service", "list", "--json")[1])[0]["frozen_reason"] == "checking"
    assert edm("task", "pause", str(created["id"]))[0] == 0
    assert edm("task", "resume", str(created["id"]))[0] == 0
    assert edm("task", "cancel", str(created["id"]))[0] == 0
    tasks = json.loads(edm("task", "list", "--json")[1])
    assert tasks[0]["status"] == "cancelled" and tasks[0]["counts"] == {"cancelled": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["service", "add", "x", "--provider", "sandbox", "--interval", "-1"], "--interval"),
        (["service", "add", "x", "--provider", "pigeon", "--interval", "1"], "unknown provider"),
        (
            ["service", "add", "x", "--provider", "sandbox", "--interval", "1", "--option", "oops"],
            "KEY=VALUE",
        ),
        (["service", "freeze", "nope"], "unknown service 'nope'"),
        (
            ["task", "create", "t", "--subject", "s", "--text", "x", "--services", "nope"],
            "unknown service 'nope'",
        ),
        (["task", "create", "t", "--subject", "s"], "--html FILE or --text TEXT"),
        (["task", "create", "t", "--subject", "s", "--text", "a\n{% if %}"], "line 2"),
        (["task", "show", "999"], "unknown task 999"),
        (["task", "resume", "999"], "unknown task 999"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    env: dict[str, str], args: list[str], message: str
) -> None:
    code, out, err = edm(*args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_import_keeps_good_rows_and_reports_bad_ones_by_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(
        "email,name\nok@example.com,Ok\nnot-an-email,X\nfine@example.com,F,extra\n"
        "second@example.com,S\n"
    )
    code, out, err = edm("contacts", "import", str(csv))
    assert code != 0
    assert "imported 2 contacts" in out
    assert "line 3: not an email address" in err
    assert "line 4: more fields than the header" in err


def test_import_without_email_column_imports_nothing(env: dict[str, str], tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("name,city\nAnn,Oslo\n")
    code, _, err = edm("contacts", "import", str(csv))
    assert code != 0 and "no `email` column" in err
    code, _, err = edm("contacts", "import", str(tmp_path / "missing.csv"))
    assert code != 0 and "cannot read" in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("not a url", "bad database URL"),
        ("postgresql://postgres@127.0.0.1:1/nothing", "cannot open the database"),
    ],
)
def test_bad_database_url_is_a_clear_error(url: str, message: str) -> None:
    env = {**os.environ, "EDM_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "edm", "service", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDM_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("EDM_LEASE_SECONDS", "2.5")
    get_settings.cache_clear()
    try:
        assert get_settings().database_url.endswith("/test")
        assert get_settings().lease_seconds == 2.5
    finally:
        get_settings.cache_clear()


def test_service_list_hides_secrets(env: dict[str, str]) -> None:
    code, _, err = edm(
        "service",
        "add",
        "el",
        "--provider",
        "engagelab",
        "--interval",
        "1",
        "--option",
        "api_user=edm",
        "--option",
        "api_key=s3cret",
    )
    assert code == 0, err
    listed = json.loads(edm("service", "list", "--json")[1])[0]
    assert listed["options"] == {"api_user": "edm", "api_key": "***"}
    assert "s3cret" not in edm("service", "list")[1]


def test_a_scheduled_task_starts_by_itself_at_its_time(env: dict[str, str], tmp_path: Path) -> None:
    import time
    from datetime import UTC, datetime

    from tests.helpers import Worker, edm

    csv = tmp_path / "c.csv"
    csv.write_text("email\na@example.com\nb@example.com\n")
    assert edm("contacts", "import", str(csv))[0] == 0
    assert edm("service", "add", "s", "--provider", "sandbox", "--interval", "0")[0] == 0
    at = datetime.fromtimestamp(time.time() + 2, UTC).isoformat()
    code, out, err = edm(
        "task", "create", "later", "--subject", "s", "--text", "x", "--at", at, "--json"
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["status"] == "scheduled"
    assert abs(created["scheduled_at"] - datetime.fromisoformat(at).timestamp()) < 1e-3

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    shown = json.loads(edm("task", "show", str(created["id"]), "--json")[1])
    assert shown["status"] == "completed" and shown["counts"] == {"sent": 2}
    assert shown["started_at"] >= shown["scheduled_at"]
    code, _, err = edm("task", "create", "bad", "--subject", "s", "--text", "x", "--at", "soon")
    assert code != 0 and "--at must be an ISO 8601 time" in err
