"""Liveness: the process answers HTTP. Reads nothing, so a database outage does not make
an orchestrator restart a process that would recover by itself."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(prefix="/health", tags=["health"])


class Live(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/live", response_model=Live)
async def live() -> Live:
    return Live()
