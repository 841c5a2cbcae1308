"""Tokens of the REST API: made, listed, revoked, and checked on every request.

A token is shown once, when it is made; the database keeps its SHA-256 only, so a copy of
the database gives no access. A `read` token may only read; `admin` may change anything.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from edm import validation
from edm.db.models import API_ROLES, ApiToken

PREFIX = "edm_"
USE_NOTED_EVERY = 60.0  # seconds


class TokenInputError(ValueError):
    """Bad input for a token command."""


@dataclass(frozen=True)
class TokenView:
    name: str
    role: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_token(engine: Engine, name: str, role: str) -> str:
    """A new token for `name`; the only time it is seen."""
    name = validation.label(name, "token name", error=TokenInputError)
    if role not in API_ROLES:
        raise TokenInputError(f"--role must be one of {', '.join(API_ROLES)}, not {role!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        if conn.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise TokenInputError(f"a token named {name!r} exists: revoke it or pick a name")
        conn.execute(
            ApiToken.__table__.insert().values(
                name=name, role=role, token_hash=digest(token), created_at=time.time()
            )
        )
    return token


def list_tokens(engine: Engine) -> list[TokenView]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ApiToken.name,
                ApiToken.role,
                ApiToken.created_at,
                ApiToken.last_used_at,
                ApiToken.revoked_at,
            ).order_by(ApiToken.name)
        ).all()
    return [TokenView(*row) for row in rows]


def revoke_token(engine: Engine, name: str) -> None:
    """The token stops working at once. Its row stays, for the record, so its name stays
    taken."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=time.time())
        ).rowcount
        if not changed:
            exists = conn.scalar(select(ApiToken.id).where(ApiToken.name == name))
            raise TokenInputError(
                f"token {name!r} is already revoked" if exists else f"no token named {name!r}"
            )


def role_of(engine: Engine, token: str) -> str | None:
    """The role of a live token, None for an unknown or revoked one. Its last use is noted
    at most once a minute: a busy client does not make every read a write."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiToken.id, ApiToken.role, ApiToken.last_used_at).where(
                ApiToken.token_hash == digest(token), ApiToken.revoked_at.is_(None)
            )
        ).first()
    if row is None:
        return None
    now = time.time()
    if row.last_used_at is None or row.last_used_at < now - USE_NOTED_EVERY:
        with engine.begin() as conn:
            conn.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return str(row.role)
