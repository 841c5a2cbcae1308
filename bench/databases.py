"""Fresh, empty databases for a benchmark run, removed afterwards whatever happens.

A bench must never write into a database someone uses: PostgreSQL runs get a database of
their own on the server named by the admin URL.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Target:
    """A freshly created database: the SQLAlchemy URL and what the raw driver needs."""

    kind: str  # sqlite | postgresql
    url: str  # for edm (open_database / make_engine)
    dsn: str  # for the raw driver: a file path (SQLite) or a libpq URL (PostgreSQL)


@contextlib.contextmanager
def fresh_database(kind: str, admin_url: str) -> Iterator[Target]:
    """A new, empty database that is removed afterwards, whatever happens."""
    if kind == "sqlite":
        workdir = Path(tempfile.mkdtemp(prefix="edm-bench-"))
        path = workdir / "bench.db"
        try:
            yield Target("sqlite", f"sqlite:///{path}", str(path))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    name = f"edm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield Target("postgresql", url, url)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", default=DEFAULT_ADMIN_URL, help="server to create it on")


def chosen_databases(options: argparse.Namespace) -> Iterator[Target]:
    """A fresh database of each kind `--db` names, one after the other."""
    kinds = ("sqlite", "postgresql") if options.db == "both" else (options.db,)
    for kind in kinds:
        with fresh_database(kind, options.pg_url) as target:
            yield target
