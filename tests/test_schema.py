"""The schema every command relies on without asking Alembic."""

from __future__ import annotations

from sqlalchemy import Engine

from edm.db.migrate import HEAD_REVISION, current_revision, script_head


def test_the_head_revision_the_code_expects_is_the_newest_migration() -> None:
    # Commands skip Alembic when the database is at HEAD_REVISION: a new migration that
    # forgets to move it would never be applied.
    assert script_head() == HEAD_REVISION


def test_a_new_database_is_brought_to_head(engine: Engine) -> None:
    assert current_revision(engine) == HEAD_REVISION
