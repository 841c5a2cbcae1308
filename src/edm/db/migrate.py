"""Apply Alembic migrations; every command that needs the schema calls `upgrade` itself."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Concurrent instances starting together must not race on the DDL.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7270533)")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
