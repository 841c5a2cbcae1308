"""One error shape for every JSON answer: `{"error": {"code", "message", "field"}}`.

A client (a provider's webhook retrier, a script) reads one shape whatever went wrong,
and bad input is always a 4xx naming the problem, never a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

# Codes for the statuses Starlette raises by itself (unknown route, wrong method).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# What the REST API's routes declare they may answer besides success, for the schema.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409)
}


class ApiError(Exception):
    """An answer other than success, raised from a handler or a dependency."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(code=code, message=message, field=field)
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    **kwargs: object,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(), status_code=status, **kwargs)  # type: ignore[arg-type]


def database_unavailable() -> JSONResponse:
    """503, so a webhook sender retries later instead of dropping the event."""
    return error_response(
        503, "database_unavailable", "the database is unavailable; try again later"
    )


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        ErrorBody(error=exc.detail).model_dump(), status_code=exc.status, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code in (404, 405):
        message = f"{request.method} {request.url.path}: {exc.detail}".lower()
    else:
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":  # its loc is ("body", character position)
        where = first.get("loc", ("body", "?"))[-1]
        problem = first.get("ctx", {}).get("error", "invalid JSON")
        return error_response(
            400, "invalid_request", f"the body is not JSON: {problem} at character {where}", "body"
        )
    field = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(400, "invalid_request", str(first.get("msg", "invalid request")), field)


async def _database_error(_request: Request, exc: Exception) -> Response:
    log.warning(
        "database unavailable: %s",
        str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300],
        extra={"action": "database_unavailable"},
    )
    return database_unavailable()


async def _unexpected(_request: Request, _exc: Exception) -> Response:
    # Starlette re-raises the exception after this answer, so the server logs it.
    return error_response(500, "internal_error", "an unexpected error; it was logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
