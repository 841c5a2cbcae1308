"""The engine and settings of the app that received a request: kept on the app, not in
globals, so tests and several apps in one process each use their own."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from edm.config import Settings
from edm.db import secrets


# `async def`, though nothing is awaited: FastAPI runs a plain `def` dependency in its
# thread pool, a hop per dependency per request for what is an attribute read.
async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class InstallationSecrets:
    """The signing key and the sandbox webhook token, read once per app: both are made
    once per installation and never change, so asking the database on every request
    would only add a write-capable round trip to the hot path."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._signing_key: str | None = None
        self._webhook_token: str | None = None

    def signing_key(self) -> str:
        if self._signing_key is None:
            self._signing_key = secrets.signing_key(self._engine, self._settings.secret_key)
        return self._signing_key

    def webhook_token(self) -> str:
        if self._webhook_token is None:
            self._webhook_token = secrets.webhook_token(self._engine)
        return self._webhook_token

    @property
    def known_webhook_token(self) -> str | None:
        """The token if it was read already: no thread hop needed for it."""
        return self._webhook_token


async def get_secrets(request: Request) -> InstallationSecrets:
    return request.app.state.secrets


SecretsDep = Annotated[InstallationSecrets, Depends(get_secrets)]
