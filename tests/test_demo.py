"""`edm demo`: it runs on a database of its own and never writes to a real installation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect, text

from edm import services as services_mod
from edm.db import open_database
from edm.db.engine import make_engine
from edm.demo import split
from tests.conftest import PG_ADMIN_URL
from tests.helpers import FAST_ENV, make_contacts

CONTACTS = "20"  # about 2.5 s at the demo's pace


def demo(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`edm demo` in a subprocess; its temporary directory goes under tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", "edm", "demo", "--contacts", CONTACTS, *args],
        env={**env, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any EDM_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    return {**env, **FAST_ENV, **extra}


def rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table: to show that a database was left exactly as it was."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {table}"))), key=repr)
                for table in sorted(inspect(conn).get_table_names())
            }
    finally:
        engine.dispose()


def demo_database(stdout: str) -> Path:
    match = re.search(r"demo database \(throwaway\): sqlite:///(\S+)", stdout)
    assert match, stdout
    return Path(match.group(1))


@pytest.fixture
def empty_pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own, without even edm's schema, dropped afterwards."""
    name = f"edm_demo_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_demo_refuses_a_database_that_holds_a_service(db_url: str, tmp_path: Path) -> None:
    engine = open_database(db_url)
    services_mod.add_service(engine, "real", "sandbox", 31.0)
    make_contacts(engine, 3)
    engine.dispose()
    before = rows(db_url)

    result = demo(clean_env(), tmp_path, "--database", db_url)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "already holds 1 service, 3 contacts" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert rows(db_url) == before
    assert not list(tmp_path.glob("edm-demo-*"))


def test_demo_ignores_edm_database_url(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    open_database(db_url).dispose()
    before = rows(db_url)

    result = demo(env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "task 1: completed; sent 20" in result.stdout
    assert db_url not in result.stdout
    assert rows(db_url) == before
    assert not demo_database(result.stdout).parent.exists()


def test_keep_keeps_the_database_and_says_how_to_open_it(tmp_path: Path) -> None:
    data_home = tmp_path / "data"
    result = demo(clean_env(XDG_DATA_HOME=str(data_home)), tmp_path, "--keep")

    assert result.returncode == 0, result.stdout + result.stderr
    kept = demo_database(result.stdout)
    assert f"export EDM_DATABASE_URL=sqlite:///{kept}" in result.stdout
    assert kept.is_file() and kept.parent.parent == tmp_path
    engine = open_database(f"sqlite:///{kept}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM contacts")).scalar_one() == 20
    engine.dispose()
    # Not the default database either: nothing in the user's data directory.
    assert not data_home.exists()


def test_demo_on_an_empty_postgresql_database(empty_pg_url: str, tmp_path: Path) -> None:
    result = demo(clean_env(), tmp_path, "--database", empty_pg_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo database (given with --database): postgresql://" in result.stdout
    assert "task 1: completed; sent 20" in result.stdout
    # The sandbox's events came back through the HTTP app the demo runs: the whole loop.
    delivered = re.search(r"funnel \(of sent\): delivered (\d+)", result.stdout)
    assert delivered and int(delivered.group(1)) > 0, result.stdout
    after = rows(empty_pg_url)
    assert len(after["services"]) == 2 and len(after["contacts"]) == 20


@pytest.mark.parametrize("count", [0, 1, 19, 20, 73, 126, 127, 200, 1001])
def test_progress_shares_add_up(count: int) -> None:
    rates = [1 / 0.31, 1 / 0.18]
    shares = split(count, rates)
    assert sum(shares) == count
    exact = [count * r / sum(rates) for r in rates]
    assert all(abs(a - b) < 1 for a, b in zip(shares, exact, strict=True))
