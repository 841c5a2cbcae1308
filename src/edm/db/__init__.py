"""Database access: engines, schema, migrations and the queries of the hot path."""

from __future__ import annotations

from sqlalchemy import Engine

from edm.db.engine import make_engine
from edm.db.location import configured_database_url
from edm.db.migrate import ensure_schema


def open_database(url: str | None = None, *, migrate: bool = True) -> Engine:
    """The engine for `url` (default: EDM_DATABASE_URL), with the schema brought up to date."""
    engine = make_engine(url or configured_database_url())
    if migrate:
        ensure_schema(engine)
    return engine
