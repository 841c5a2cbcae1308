"""The ASGI app: `create_app()`, runnable by `edm serve` or any ASGI server
(`uvicorn --factory edm.api.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from edm import console
from edm.api import errors, health, metrics, unsubscribe, webhooks
from edm.api.dependencies import InstallationSecrets
from edm.api.resources import contacts, lists, report, services, tasks
from edm.api.resources import events as event_resources
from edm.config import Settings, get_settings
from edm.events.intake import IntakeWriter
from edm.events.processor import BatchProcessor
from edm.health.checks import CachedChecks
from edm.health.metrics import metrics_registry


def create_app(engine: Engine | None = None, settings: Settings | None = None) -> FastAPI:
    """The app on `engine` (default: EDM_DATABASE_URL, schema brought up to date) with
    `settings` (default: EDM_* variables)."""
    settings = settings or get_settings()
    if engine is None:
        from edm.db import open_database

        engine = open_database(settings.database_url)
    intake = IntakeWriter(engine)
    processor = BatchProcessor(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        intake.start()
        processor.start()
        try:
            yield
        finally:
            intake.stop()
            processor.stop()

    app = FastAPI(
        title="edm",
        version=_version(),
        description="The REST API of edm: `Authorization: Bearer TOKEN` (`edm token create`).",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.intake = intake
    app.state.processor = processor
    app.state.settings = settings
    app.state.secrets = InstallationSecrets(engine, settings)
    app.state.health = CachedChecks(engine, settings, settings.health_cache_seconds)
    app.state.metrics = metrics_registry(engine, settings, app.state.health)
    errors.install(app)
    app.add_middleware(metrics.WebhookCounter)
    app.include_router(webhooks.router)
    app.include_router(unsubscribe.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(lists.router)
    app.include_router(contacts.router)
    app.include_router(tasks.router)
    app.include_router(services.router)
    app.include_router(event_resources.router)
    app.include_router(report.router)
    for router in console.routers():
        app.include_router(router)
    app.mount(console.STATIC_PATH, console.static_files(), name="console-static")
    return app


def _version() -> str:
    from importlib.metadata import version

    return version("edm")
