"""Secrets an installation makes once and keeps in the database, so every instance sharing
the database agrees: the signing key (unless EDM_SECRET_KEY is set) and the sandbox
webhook token."""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, select

from edm.db.dialects import insert_ignoring
from edm.db.models import AppSetting

KEY = "secret_key"
WEBHOOK_TOKEN_KEY = "sandbox_webhook_token"


def signing_key(engine: Engine, configured: str = "") -> str:
    if configured:
        return configured
    return _made_once(engine, KEY)


def webhook_token(engine: Engine) -> str:
    """The token the generic webhook accepts besides EDM_WEBHOOK_TOKEN: it works before an
    operator has set one, so a sandbox installation can post events to itself."""
    return _made_once(engine, WEBHOOK_TOKEN_KEY)


def _made_once(engine: Engine, key: str) -> str:
    """The value under `key`, made at random by whichever instance asks first."""
    with engine.begin() as conn:
        conn.execute(
            insert_ignoring(conn, AppSetting.__table__, ["key"]).values(
                key=key, value=secrets.token_urlsafe(32)
            )
        )
        return conn.execute(select(AppSetting.value).where(AppSetting.key == key)).scalar_one()
