"""Fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL gets a fresh database per test run, dropped at the end. Locally a missing
PostgreSQL skips its half; in CI (CI=true) it fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text

from edm.config import get_settings
from edm.db import open_database
from edm.db.models import Base
from tests.helpers import FAST_ENV

PG_ADMIN_URL = os.environ.get("EDM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
# Every table but `app_settings` (the installation's signing key and sandbox token).
TABLES = tuple(t.name for t in Base.metadata.sorted_tables if t.name != "app_settings")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"edm_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    open_database(url).dispose()
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edm.db'}"
    return _emptied(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """PostgreSQL only, for cases that need several processes on one database."""
    return _emptied(postgres_url)


def _emptied(url: str) -> str:
    """The run's PostgreSQL database with every table emptied: each test starts clean."""
    engine = open_database(url, migrate=False)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for `edm` subprocesses and in-process CLI calls."""
    values = {**FAST_ENV, "EDM_DATABASE_URL": db_url}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {**os.environ, **values}
    get_settings.cache_clear()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One database for a whole test module, for tests that share one API server."""
    from tests.api_server import module_engine

    engine = module_engine(request, tmp_path_factory)
    yield engine
    engine.dispose()


@pytest.fixture
def database(db: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The module's database emptied (but for the installation's keys), and `edm`
    commands run in-process pointed at it."""
    from tests.api_server import emptied

    monkeypatch.setenv("EDM_DATABASE_URL", db.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield emptied(db)
    get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the browser tests wrote their screenshots (tests/test_browser.py), also when
    they ran in another process (pytest-xdist)."""
    folders = {
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "screenshots"
    }
    for folder in sorted(folders):
        terminalreporter.write_line(f"browser screenshots: {folder}")
