"""`GET /metrics`: Prometheus's text format (see `edm.health.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edm.health.metrics import WEBHOOK_REQUESTS, render

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """This process's counters and the installation's gauges, for Prometheus."""
    body = await run_in_threadpool(render, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# Which provider posts to which webhook path.
WEBHOOK_PATHS = {
    "/api/webhooks/mail-event": "engagelab",
    "/api/webhooks/engagelab": "engagelab",
    "/api/webhooks/generic": "generic",
}


class WebhookCounter:
    """ASGI middleware counting webhook requests by provider and the code they were
    answered with, whichever layer answered (authentication, size, the database)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = WEBHOOK_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if provider is None:
            await self.app(scope, receive, send)
            return
        code = "500"  # unless an answer starts

        async def counting_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            WEBHOOK_REQUESTS.labels(provider, code).inc()
