"""Who may use the REST API: `Authorization: Bearer TOKEN` (`edm token create`).

A `read` token may read (GET); changing anything takes an `admin` token. No token or an
unknown one is 401, a read token writing is 403: each with the one error shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from edm.api.errors import ApiError
from edm.api_tokens import role_of

READING = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edm"'}


async def caller_role(request: Request) -> str:
    """The caller's role, after checking it may do what it asks."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` (edm token create)",
            headers=CHALLENGE,
        )
    role = await run_in_threadpool(role_of, request.app.state.engine, token.strip())
    if role is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token", headers=CHALLENGE)
    if role != "admin" and request.method not in READING:
        raise ApiError(403, "forbidden", f"a {role} token cannot change anything")
    return role


Caller = Annotated[str, Depends(caller_role)]
