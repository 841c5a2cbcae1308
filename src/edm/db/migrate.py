"""Apply Alembic migrations; every command that needs the schema calls `ensure_schema`.

Alembic is imported only when the schema is behind: reading one row of `alembic_version`
costs a millisecond, importing Alembic and walking its scripts most of a second, and
every command opens the database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions; tests check the two agree.
HEAD_REVISION = "0013"


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database, None when it has none yet."""
    with engine.connect() as conn:  # a database that cannot be reached fails here
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DatabaseError:  # no alembic_version table: a new database
            return None


def ensure_schema(engine: Engine) -> None:
    if current_revision(engine) != HEAD_REVISION:
        upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A migration that copies a table drops the old one, and with foreign keys on
            # SQLite first deletes its rows, cascading to the tables that refer to it. The
            # pragma is refused inside a transaction: set before ours begins.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                if not sqlite:
                    # Concurrent instances starting together must not race on the DDL.
                    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7270533)")
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite:
                    _check_references(connection)
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _check_references(connection: Connection) -> None:
    """What SQLite did not check while its foreign keys were off: refuse the upgrade
    (rolled back) rather than keep a row that points nowhere."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        table, rowid, parent, _ = broken[0]
        raise RuntimeError(
            f"migration left {len(broken)} row(s) pointing nowhere,"
            f" the first: {table} rowid {rowid} -> {parent}"
        )


def script_head() -> str | None:
    """The head revision according to the migration scripts themselves."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()
