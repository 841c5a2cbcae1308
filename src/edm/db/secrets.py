"""The installation's signing key: from EDM_SECRET_KEY, or made once and kept in the database."""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edm.db.models import AppSetting

KEY = "secret_key"


def signing_key(engine: Engine, configured: str = "") -> str:
    if configured:
        return configured
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        conn.execute(
            insert(AppSetting)
            .values(key=KEY, value=secrets.token_urlsafe(32))
            .on_conflict_do_nothing(index_elements=[AppSetting.key])
        )
        return conn.execute(select(AppSetting.value).where(AppSetting.key == KEY)).scalar_one()
