"""Webhook endpoints: authenticate → read (capped) → log raw → answer → process.

The raw request is committed to the event log before any answer, so a 2xx always means
the request is kept; parsing and applying run after the response (EngageLab wants an
answer within 3 s) and a failure there leaves the request in the log for upkeep to
retry. A body that is not JSON, or not of the provider's shape, is logged too (it passed
authentication) and answered 400, naming the problem.
"""

from __future__ import annotations

import functools
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from edm.api.auth import count_rejection, engagelab_allowed, token_allowed
from edm.api.dependencies import EngineDep, SecretsDep, SettingsDep
from edm.api.errors import ApiError, ErrorBody, error_response
from edm.events.intake import IntakeWriter
from edm.events.parsers.base import WebhookParseError, decode_json
from edm.events.parsers.registry import parser_for
from edm.services import engagelab_webhook_keys

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])

ERRORS = {
    400: {"model": ErrorBody, "description": "not JSON, or not this provider's shape (logged)"},
    401: {"model": ErrorBody, "description": "not authenticated (not stored)"},
    413: {"model": ErrorBody, "description": "body over EDM_WEBHOOK_MAX_BYTES (not stored)"},
    503: {"model": ErrorBody, "description": "database unavailable: retry later"},
}


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    request_id: int


@router.post("/mail-event", response_model=Accepted, responses=ERRORS)
@router.post("/engagelab", response_model=Accepted, responses=ERRORS, include_in_schema=False)
async def engagelab_webhook(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """EngageLab's event notifications, verified with every verifying service's key."""
    keys = await run_in_threadpool(engagelab_webhook_keys, engine)
    if not engagelab_allowed(request.headers, keys):
        count_rejection("engagelab", request.client.host if request.client else None)
        raise ApiError(
            401,
            "unauthenticated",
            "the X-WebHook-Signature does not match the webhook_key of any EngageLab service"
            " with webhook_verify on",
        )
    return await _receive(request, settings.webhook_max_bytes, "engagelab")


@router.post("/generic", response_model=Accepted, responses=ERRORS)
async def generic_webhook(
    request: Request, settings: SettingsDep, installation: SecretsDep
) -> Response:
    """edm's own format (docs/webhooks.md), with EDM_WEBHOOK_TOKEN as Bearer or Basic password."""
    sandbox = installation.known_webhook_token or await run_in_threadpool(
        installation.webhook_token
    )
    if not token_allowed(request.headers.get("authorization"), settings.webhook_token, sandbox):
        count_rejection("generic", request.client.host if request.client else None)
        hint = (
            "send EDM_WEBHOOK_TOKEN as a Bearer token or as the Basic auth password"
            if settings.webhook_token
            else "EDM_WEBHOOK_TOKEN is not set on this server: set it, and send it as a"
            " Bearer token or as the Basic auth password"
        )
        raise ApiError(
            401,
            "unauthenticated",
            f"missing or wrong webhook token; {hint}",
            headers={"WWW-Authenticate": 'Bearer realm="edm webhooks"'},
        )
    return await _receive(request, settings.webhook_max_bytes, "generic")


async def _receive(request: Request, max_bytes: int, provider: str) -> Response:
    body = await read_capped(request, max_bytes)
    # The commit that makes any answer safe (shared with the requests arriving at the same
    # time), then the check that decides between 200 and 400.
    intake: IntakeWriter = request.app.state.intake
    request_id, problem = await intake.log(
        provider, request.headers, body, functools.partial(body_problem, provider)
    )
    # Processed by the app's batch processor, whatever the answer: it marks a bad body
    # invalid. Woken now; the request is already safe in the log.
    request.app.state.processor.notify()
    if problem is not None:
        code, message = problem
        return error_response(400, code, message)
    return JSONResponse(Accepted(request_id=request_id).model_dump())


async def read_capped(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to be over `max_bytes`: from
    Content-Length before reading anything, else while streaming it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"the body is over {max_bytes} bytes (EDM_WEBHOOK_MAX_BYTES)")


def body_problem(provider: str, body: bytes) -> tuple[str, str] | None:
    """(code, message) if the pipeline will find the body invalid, else None.

    Decoded and parsed as the pipeline does, so the answer agrees with what processing
    will conclude; the result is thrown away, processing parses again from the log."""
    try:
        decoded = decode_json(body.decode("utf-8", "replace"))
    except WebhookParseError as exc:
        return "invalid_json", str(exc)
    except RecursionError:
        return "invalid_json", "the body is not JSON this server can read: nested too deeply"
    parser = parser_for(provider)
    if parser is None:
        return "invalid_body", f"no webhook parser for provider {provider!r}"
    try:
        parser.parse(decoded)
    except WebhookParseError as exc:
        return "invalid_body", str(exc)
    return None
