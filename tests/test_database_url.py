"""Database URLs: the forms hosts hand out, passwords never shown, the default database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edm.db.engine import DatabaseURLError, display_url, normalise_url
from tests.helpers import FAST_ENV

PASSWORD = "hunter2"


def edm(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """`edm ARGS` in a subprocess with only the EDM_* settings given here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    return subprocess.run(
        [sys.executable, "-m", "edm", *args],
        env={**base, **FAST_ENV, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_scheme(url: str, scheme: str, password: str | None = None) -> str:
    rest = url.split("://", 1)[1]
    if password:
        user, at_host = rest.split("@", 1)
        rest = f"{user}:{password}@{at_host}"
    return f"{scheme}://{rest}"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgresql_url_forms_are_accepted(postgres_url: str, scheme: str) -> None:
    result = edm("db", "info", "--json", EDM_DATABASE_URL=with_scheme(postgres_url, scheme))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["backend"] == "postgresql"
    assert info["url"].startswith("postgresql+psycopg://")


def test_normalise_url() -> None:
    assert normalise_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalise_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalise_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert normalise_url("sqlite:////var/lib/edm.db") == "sqlite:////var/lib/edm.db"
    with pytest.raises(DatabaseURLError, match="port is not a number"):
        normalise_url(f"postgresql://u:{PASSWORD}@host:abc/db")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@h:5432/db",
        f"postgres://u:{PASSWORD}@h/db?sslmode=require",
        f"postgresql://u:{PASSWORD}@host:abc/db",
        f"mysql://u:{PASSWORD}@h/db",
    ],
)
def test_display_url_hides_the_password(url: str) -> None:
    shown = display_url(url)
    assert PASSWORD not in shown and "u:***@h" in shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"postgresql://u:{PASSWORD}@127.0.0.1:1/x", "cannot open the database"),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/edm_no_such_db", "does not exist"),
        (f"postgresql://u:{PASSWORD}@host:abc/db", "the port is not a number"),
        (f"mysql://u:{PASSWORD}@h/db", "unsupported database 'mysql'"),
    ],
)
@pytest.mark.parametrize("command", [["service", "list"], ["worker"], ["db", "info"]])
def test_failing_url_is_one_line_without_the_password(
    url: str, message: str, command: list[str]
) -> None:
    result = edm(*command, EDM_DATABASE_URL=url)
    assert result.returncode == 1
    assert message in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # The worker logs its start (at INFO) before it opens the database: one error line, last.
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1
    if command != ["worker"]:
        assert len(lines) == 1


def test_worker_says_first_which_database_it_uses(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    result = edm("worker", "--exit-when-idle", EDM_DATABASE_URL=f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"database: sqlite:///{path}"


def test_default_database_is_in_the_user_data_directory(tmp_path: Path) -> None:
    data_home, home, cwd = tmp_path / "data", tmp_path / "home", tmp_path / "cwd"
    for directory in (home, cwd):
        directory.mkdir()
    result = edm("db", "info", "--json", cwd=cwd, HOME=str(home), XDG_DATA_HOME=str(data_home))
    assert result.returncode == 0, result.stderr
    expected = data_home / "edm" / "edm.db"
    assert json.loads(result.stdout)["url"] == f"sqlite:///{expected}"
    assert expected.is_file()
    assert list(cwd.iterdir()) == []


def test_db_info_shows_the_database_and_its_contents(db_url: str, tmp_path: Path) -> None:
    url = with_scheme(db_url, "postgresql", PASSWORD) if db_url.startswith("postgres") else db_url
    csv = tmp_path / "c.csv"
    csv.write_text("email\na@example.com\nb@example.com\n")
    assert edm("contacts", "import", str(csv), EDM_DATABASE_URL=url).returncode == 0
    added = edm(
        "service", "add", "s", "--provider", "sandbox", "--interval", "1", EDM_DATABASE_URL=url
    )
    assert added.returncode == 0, added.stderr

    result = edm("db", "info", "--json", EDM_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info == {
        "url": display_url(normalise_url(url)),
        "backend": "sqlite" if url.startswith("sqlite") else "postgresql",
        "schema_revision": info["schema_revision"],
        "services": 1,
        "contacts": 2,
        "tasks": 0,
    }
    assert info["schema_revision"]

    shown = edm("db", "info", EDM_DATABASE_URL=url)
    assert shown.returncode == 0, shown.stderr
    assert PASSWORD not in shown.stdout + result.stdout
    lines = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert lines["backend"].strip() == info["backend"]
    assert lines["services"].strip() == "1" and lines["contacts"].strip() == "2"
    assert lines["url"].strip() == info["url"]
