"""Console sessions: a signed cookie made from an API token or a user's password, and
CSRF for every form.

The cookie holds the token's SHA-256, never the token: a stolen cookie dies with the
token (`edm token revoke`) or after 12 h, and never gives the bearer token for the API.
A user's cookie holds the name and a stamp of the password's hash (`edm.users`): it dies
with a new password, a new role or the user's deletion.
It is signed with HMAC-SHA256 under a key derived from the installation's signing key,
so every instance on one database accepts it and it is never valid as an unsubscribe
token (or anything else that key signs). Each request checks the token is still live.

A form carries a random `csrf` value that only our own pages know: the session's, or for
the sign-in form (no session yet) that of a short signed pre-session cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm import users
from edm.api_tokens import digest, role_of
from edm.db.models import ApiToken

SESSION_COOKIE = "edm_session"
SESSION_SECONDS = 12 * 3600
LOGIN_COOKIE = "edm_login"  # the sign-in form's CSRF value, before there is a session
LOGIN_SECONDS = 3600
MAX_FORM_BYTES = 16 * 1024  # a token and a few fields; more is not ours
MAX_FORM_FIELDS = 20


@dataclass(frozen=True)
class Session:
    who: str  # "token NAME" or "user NAME"
    role: str  # admin | read: as the database says now
    csrf: str
    expires_at: float


# -- signed values ------------------------------------------------------------------------
def _key(signing_key: str, purpose: str) -> bytes:
    """A key of its own per purpose: a value signed for one use is worthless for another."""
    return hmac.new(signing_key.encode(), f"edm console {purpose}".encode(), "sha256").digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(signing_key: str, purpose: str, data: dict[str, Any]) -> str:
    payload = _b64(json.dumps(data, separators=(",", ":")).encode())
    mac = hmac.new(_key(signing_key, purpose), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def unsign(signing_key: str, purpose: str, value: str | None) -> dict[str, Any] | None:
    """The data of a value we signed for `purpose` and that has not expired, else None."""
    if not value or len(value) > 2048:
        return None
    payload, _, mac = value.partition(".")
    expected = hmac.new(_key(signing_key, purpose), payload.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        data = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("exp"), int | float):
        return None
    return data if data["exp"] > time.time() else None


async def signing_key(request: Request) -> str:
    # Read once per app, but the first read may write the key: not on the event loop.
    return await run_in_threadpool(request.app.state.secrets.signing_key)


def set_cookie(response: Response, request: Request, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


# -- sessions -----------------------------------------------------------------------------
def check_token(engine: Engine, token: str) -> dict[str, str] | None:
    """What a session keeps of a live token, its use noted; None for an unknown or revoked one."""
    role = role_of(engine, token)
    return None if role is None else {"token_hash": digest(token)}


def check_password(engine: Engine, name: str, password: str) -> dict[str, str] | None:
    """What a session keeps of a user whose password this is; None otherwise."""
    signed_in = users.sign_in(engine, name, password)
    return None if signed_in is None else {"user": signed_in.name, "stamp": signed_in.stamp}


def _live_token(engine: Engine, token_hash: str) -> tuple[str, str] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiToken.name, ApiToken.role).where(
                ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
            )
        ).first()
    return None if row is None else (str(row.name), str(row.role))


async def session_data(request: Request) -> dict[str, Any] | None:
    """The signed content of this request's session cookie, without asking the database."""
    data = unsign(await signing_key(request), "session", request.cookies.get(SESSION_COOKIE))
    if data is None:
        return None
    if isinstance(data.get("token_hash"), str):
        return data
    if isinstance(data.get("user"), str) and isinstance(data.get("stamp"), str):
        return data
    return None


def holder_key(data: dict[str, Any]) -> str:
    """Who a session's signed content names: its token's hash or its user."""
    return f"token:{data['token_hash']}" if "token_hash" in data else f"user:{data['user']}"


def _holder(engine: Engine, data: dict[str, Any]) -> tuple[str, str] | None:
    """(who, role) of a session's token or user, as the database says now."""
    if "token_hash" in data:
        token = _live_token(engine, data["token_hash"])
        return None if token is None else (f"token {token[0]}", token[1])
    role = users.still_signed_in(engine, data["user"], data["stamp"])
    return None if role is None else (f"user {data['user']}", role)


async def current_session(request: Request) -> Session | None:
    """The session of this request, None without a valid cookie, with a revoked token or
    for a user whose password or role changed."""
    data = await session_data(request)
    if data is None:
        return None
    holder = await run_in_threadpool(_holder, request.app.state.engine, data)
    if holder is None:
        return None
    return Session(holder[0], holder[1], str(data.get("csrf", "")), float(data["exp"]))


async def start_session(request: Request, response: Response, holder: dict[str, str]) -> None:
    """A session for `holder`: {"token_hash": ...} or {"user": ..., "stamp": ...}."""
    data = {
        **holder,
        "exp": int(time.time()) + SESSION_SECONDS,
        "csrf": secrets.token_urlsafe(32),
    }
    value = sign(await signing_key(request), "session", data)
    set_cookie(response, request, SESSION_COOKIE, value, SESSION_SECONDS)
    response.delete_cookie(LOGIN_COOKIE, path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


async def login_csrf(request: Request) -> tuple[str, str | None]:
    """The CSRF value of the sign-in form, and the pre-session cookie to set when the
    request had no valid one (None: it has)."""
    key = await signing_key(request)
    data = unsign(key, "login", request.cookies.get(LOGIN_COOKIE))
    if data is not None and isinstance(data.get("csrf"), str):
        return data["csrf"], None
    csrf = secrets.token_urlsafe(32)
    return csrf, sign(key, "login", {"csrf": csrf, "exp": int(time.time()) + LOGIN_SECONDS})


def set_login_cookie(request: Request, response: Response, value: str) -> None:
    set_cookie(response, request, LOGIN_COOKIE, value, LOGIN_SECONDS)


async def login_csrf_ok(request: Request, given: str) -> bool:
    data = unsign(await signing_key(request), "login", request.cookies.get(LOGIN_COOKIE))
    return data is not None and same(str(data.get("csrf", "")), given)


# -- forms --------------------------------------------------------------------------------
def same(expected: str, given: str) -> bool:
    """Constant-time equality; an empty value never matches."""
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


async def form(request: Request) -> dict[str, str]:
    """The fields of a small urlencoded form (first value each): sign-in, buttons."""
    values = await form_values(request)
    return {name: given[0] for name, given in values.items()}


async def form_values(
    request: Request, max_bytes: int = MAX_FORM_BYTES, max_fields: int = MAX_FORM_FIELDS
) -> dict[str, list[str]]:
    """Every value of each field of a urlencoded form; {} for anything else or anything
    larger. Read by hand: the multipart parser FastAPI's `Form` needs is not a
    dependency, and our forms carry no files (a CSV upload is a request body of its own)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return {}
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        return {}


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a URL),
    so a link to the sign-in page cannot send an operator elsewhere."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(c in value for c in "\\\r\n\t") or any(ord(c) < 32 for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    if parts.path.startswith(("/console/fragments/", "/console/static/")):
        return "/"  # pieces of a page, not pages
    return value
