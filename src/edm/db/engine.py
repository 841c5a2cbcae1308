"""Engines for the two supported databases.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE` so that a claim takes the write lock up front instead of failing
halfway with "database is locked".
"""

from __future__ import annotations

import re
import sqlite3
import threading

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from edm.db.location import default_database_path

# How long a SQLite writer waits for the write lock before failing.
BUSY_TIMEOUT_SECONDS = 30.0
# `user:password@` in a URL too broken to parse, so that even its error hides the password.
PASSWORD_IN_URL = re.compile(r"(://[^/@:]*:)[^/]*@")


class DatabaseURLError(ValueError):
    """The configured database URL cannot be used."""


def display_url(url: str | URL) -> str:
    """The URL as messages and logs may show it: never with its password."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return PASSWORD_IN_URL.sub(r"\1***@", url)


def normalise_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` URLs and point them at psycopg 3.

    `postgres://` is what many hosts hand out; SQLAlchemy no longer knows that name.
    """
    shown = display_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"bad database URL {shown!r}: {exc}") from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise DatabaseURLError(f"bad database URL {shown!r}: the port is not a number") from None
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise DatabaseURLError(f"unsupported SQLite driver in {shown!r}")
    else:
        raise DatabaseURLError(
            f"unsupported database {backend!r} in {shown!r}: use sqlite:///FILE or postgresql://..."
        )
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        _make_default_directory(url)
        engine = create_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )
        _configure_sqlite(engine)
    else:
        # No pre-ping: it costs a round trip per transaction on the hot path. A dropped
        # connection fails one statement; the worker is restarted and the pool recycles.
        engine = create_engine(url, pool_size=10, max_overflow=10, pool_recycle=1800)
    return engine


def _make_default_directory(url: str) -> None:
    """The default database's directory is edm's to create; any other path is the user's."""
    path = default_database_path()
    if make_url(url).database == str(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    _serialise_writes(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _serialise_writes(engine: Engine) -> None:
    """One write transaction at a time per process, queued on a lock.

    SQLite admits one writer. Threads of one process that meet a held write lock would
    fall into SQLite's busy handler, which sleeps (up to 100 ms a try) before asking
    again; waiting on a lock instead hands the database over the moment the holder
    commits. Other processes still meet the busy timeout.
    """
    lock = threading.Lock()
    holders: set[int] = set()  # ids of the pooled connections holding the lock
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def begin(conn) -> None:  # type: ignore[no-untyped-def]
        if not lock.acquire(timeout=BUSY_TIMEOUT_SECONDS):
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise
        holders.add(id(conn.connection))

    def finish(end, dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        try:
            end(dbapi_connection)
        finally:
            if id(dbapi_connection) in holders:
                holders.discard(id(dbapi_connection))
                lock.release()

    event.listen(engine, "begin", begin)
    dialect.do_commit = lambda dbapi_connection: finish(commit, dbapi_connection)  # type: ignore[method-assign]
    dialect.do_rollback = lambda dbapi_connection: finish(rollback, dbapi_connection)  # type: ignore[method-assign]


def dialect_of(engine: Engine) -> str:
    return engine.dialect.name
