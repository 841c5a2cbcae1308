"""Health over HTTP.

`/health/live`: the process answers. It reads nothing, so a database outage does not
make an orchestrator restart a process that would recover by itself.
`/health`: every health check (`edm.health.checks`); 503 when one is critical, for a
load balancer or a monitor. The results are kept a few seconds (`CachedChecks`): probes
every second from several balancers must not each recount the whole history.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edm.health.checks import CRITICAL, worst

router = APIRouter(prefix="/health", tags=["health"])


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    name: str
    status: Literal["ok", "warn", "critical"]
    value: Any
    threshold: str
    message: str


class Health(BaseModel):
    status: Literal["ok", "warn", "critical"]
    checks: list[Check]


@router.get("/live", response_model=Live)
async def live() -> Live:
    return Live()


@router.get(
    "",
    response_model=Health,
    responses={503: {"model": Health, "description": "a check is critical"}},
)
async def checks(request: Request) -> JSONResponse:
    """Every check; 200 unless one is critical (then 503)."""
    results = await run_in_threadpool(request.app.state.health.results)
    overall = worst(results)
    body = Health(status=overall, checks=[Check(**result.as_dict()) for result in results])
    return JSONResponse(body.model_dump(), status_code=503 if overall == CRITICAL else 200)
