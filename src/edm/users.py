"""People who sign in to the console with a name and a password (`edm user ...`).

The password is kept as a salted scrypt hash (the standard library's: no dependency), so
a copy of the database does not give the passwords. A session made with a password names
the user and a stamp of the hash: a new password, a deleted user or a changed role ends
every session made before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select, update

from edm import validation
from edm.db.models import API_ROLES, ConsoleUser

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
# scrypt's cost: about 50 ms and 16 MiB per check, which makes guessing slow.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class UserInputError(ValueError):
    """Bad input for a user command; the message names what is wrong."""


@dataclass(frozen=True)
class UserView:
    name: str
    role: str
    created_at: float
    password_set_at: float
    last_login_at: float | None


@dataclass(frozen=True)
class SignedIn:
    name: str
    role: str
    stamp: str  # changes with the password: sessions made before it end


# -- passwords ----------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(key)
        given = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(given, expected)


def stamp(password_hash: str, role: str) -> str:
    """What a session remembers of the user: changes with the password and the role."""
    return hashlib.sha256(f"{role}:{password_hash}".encode()).hexdigest()[:32]


def _check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise UserInputError(
            f"a password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    return validation.db_text(password, "password", error=UserInputError)


def _check_role(role: str) -> str:
    if role not in API_ROLES:
        raise UserInputError(f"--role must be one of {', '.join(API_ROLES)}, not {role!r}")
    return role


# -- the users ----------------------------------------------------------------------------
def create_user(engine: Engine, name: str, password: str, role: str) -> None:
    name = validation.label(name, "user name", error=UserInputError)
    role = _check_role(role)
    hashed = hash_password(_check_password(password))
    now = time.time()
    with engine.begin() as conn:
        if conn.scalar(select(ConsoleUser.id).where(ConsoleUser.name == name)) is not None:
            raise UserInputError(f"a user named {name!r} exists")
        conn.execute(
            ConsoleUser.__table__.insert().values(
                name=name, role=role, password_hash=hashed, created_at=now, password_set_at=now
            )
        )


def set_password(engine: Engine, name: str, password: str) -> None:
    """A new password; the user's sessions made before end."""
    hashed = hash_password(_check_password(password))
    _change(engine, name, password_hash=hashed, password_set_at=time.time())


def set_role(engine: Engine, name: str, role: str) -> None:
    _change(engine, name, role=_check_role(role))


def _change(engine: Engine, name: str, **values: object) -> None:
    with engine.begin() as conn:
        changed = conn.execute(
            update(ConsoleUser).where(ConsoleUser.name == name).values(**values)
        ).rowcount
    if not changed:
        raise UserInputError(f"no user named {name!r} (`edm user list` shows them)")


def delete_user(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        if not conn.execute(delete(ConsoleUser).where(ConsoleUser.name == name)).rowcount:
            raise UserInputError(f"no user named {name!r} (`edm user list` shows them)")


def list_users(engine: Engine) -> list[UserView]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ConsoleUser.name,
                ConsoleUser.role,
                ConsoleUser.created_at,
                ConsoleUser.password_set_at,
                ConsoleUser.last_login_at,
            ).order_by(ConsoleUser.name)
        ).all()
    return [UserView(*row) for row in rows]


# A hash to check against when the name is unknown: the answer takes as long either way,
# so timing does not tell which names exist.
_NOBODY = hash_password(secrets.token_urlsafe(16))


def sign_in(engine: Engine, name: str, password: str) -> SignedIn | None:
    """The user, when the password is theirs; None otherwise (unknown name included)."""
    if len(password) > MAX_PASSWORD_CHARS or len(name) > 200:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            select(ConsoleUser.role, ConsoleUser.password_hash).where(ConsoleUser.name == name)
        ).first()
    if row is None:
        password_matches(password, _NOBODY)
        return None
    if not password_matches(password, row.password_hash):
        return None
    with engine.begin() as conn:
        conn.execute(
            update(ConsoleUser).where(ConsoleUser.name == name).values(last_login_at=time.time())
        )
    return SignedIn(name, row.role, stamp(row.password_hash, row.role))


def still_signed_in(engine: Engine, name: str, session_stamp: str) -> str | None:
    """The user's role while the session's stamp still holds; None once it does not."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ConsoleUser.role, ConsoleUser.password_hash).where(ConsoleUser.name == name)
        ).first()
    if row is None or not hmac.compare_digest(stamp(row.password_hash, row.role), session_stamp):
        return None
    return str(row.role)
