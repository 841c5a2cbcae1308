"""The schema every command relies on without asking Alembic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text

from edm.db import open_database
from edm.db.migrate import HEAD_REVISION, current_revision, script_head, upgrade
from tests.conftest import PG_ADMIN_URL


def test_the_head_revision_the_code_expects_is_the_newest_migration() -> None:
    # Commands skip Alembic when the database is at HEAD_REVISION: a new migration that
    # forgets to move it would never be applied.
    assert script_head() == HEAD_REVISION


def test_a_new_database_is_brought_to_head(engine: Engine) -> None:
    assert current_revision(engine) == HEAD_REVISION


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of its own: the run's PostgreSQL one is already at head."""
    if request.param == "sqlite":
        engine = open_database(f"sqlite:///{tmp_path / 'old.db'}", migrate=False)
        yield engine
        engine.dispose()
        return
    request.getfixturevalue("postgres_url")  # skips (or fails in CI) without PostgreSQL
    name = f"edm_test_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = open_database(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name, migrate=False)
    yield engine
    engine.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


ROWS_OF_0009 = [
    "INSERT INTO contacts (id, email, fields, status, created_at, updated_at)"
    " VALUES (1, 'a@example.com', '{}', 'active', 0, 0)",
    "INSERT INTO services (id, name, provider, options, created_at)"
    " VALUES (1, 'one', 'sandbox', '{}', 0)",
    "INSERT INTO tasks (id, name, subject, text_body, created_at) VALUES (1, 't', 's', 'x', 0)",
    "INSERT INTO sub_tasks (id, task_id, contact_id, service_id, status, idempotency_key,"
    " sent_at, delivered_at) VALUES (1, 1, 1, 1, 'sent', 'k1', 5, 6)",
    "INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at,"
    " finished_at, outcome) VALUES (1, 1, 'l', 1, 2, 'sent')",
]


def test_upgrading_a_database_of_0009_keeps_every_row_and_index(
    new_database: Engine,
) -> None:
    # Migration 0010 drops the sub-tasks' foreign keys; SQLite does it by copying the
    # table, and dropping the old one must not cascade to the send attempts.
    upgrade(new_database, "0009")
    with new_database.begin() as conn:
        for statement in ROWS_OF_0009:
            conn.execute(text(statement))
    indexes_before = _index_definitions(new_database)

    upgrade(new_database)

    with new_database.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM send_attempts")).scalar() == 1
        kept = conn.execute(text("SELECT task_id, contact_id, status FROM sub_tasks")).all()
        assert [tuple(row) for row in kept] == [(1, 1, "sent")]
        funnel = conn.execute(text("SELECT task_id, delivered, opened FROM task_funnels")).all()
        assert [tuple(row) for row in funnel] == [(1, 1, 0)]  # counted by migration 0011
    schema = inspect(new_database)
    assert schema.get_foreign_keys("sub_tasks") == []
    referred = sorted(fk["referred_table"] for fk in schema.get_foreign_keys("send_attempts"))
    assert referred == ["services", "sub_tasks"]
    # The unique pair turned round (contact first), the index on the contact alone gone,
    # the rest as they were (partial conditions included).
    dropped = {d for d in indexes_before if "ix_sub_tasks_contact_id" in d}
    assert len(dropped) == 1
    after = _index_definitions(new_database)
    if new_database.dialect.name == "postgresql":
        dropped |= {d for d in indexes_before if "uq_sub_tasks_task_id_contact_id" in d}
        assert {d for d in after if "uq_sub_tasks_contact_id_task_id" in d} == {
            "CREATE UNIQUE INDEX uq_sub_tasks_contact_id_task_id ON public.sub_tasks"
            " USING btree (contact_id, task_id)"
        }
        after = {d for d in after if "uq_sub_tasks_contact_id_task_id" not in d}
    assert after == indexes_before - dropped
    if new_database.dialect.name == "sqlite":
        with new_database.connect() as conn:  # the pool's connections check them again
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _index_definitions(engine: Engine) -> set[str]:
    """Each index of `sub_tasks` as the database spells it, partial conditions included."""
    sql = {
        "sqlite": "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sub_tasks'"
        " AND sql IS NOT NULL",
        "postgresql": "SELECT indexdef FROM pg_indexes WHERE tablename = 'sub_tasks'",
    }[engine.dialect.name]
    with engine.connect() as conn:
        return {" ".join(row[0].split()) for row in conn.exec_driver_sql(sql)}
