"""The few statements SQLAlchemy spells per dialect, spelt once."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert


def insert_into(dialect: str, table: Table) -> Insert:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table)


def insert_ignoring(conn: Connection, table: Table, keys: list[str]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, on either database."""
    return insert_into(conn.dialect.name, table).on_conflict_do_nothing(index_elements=keys)
