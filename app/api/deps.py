"""Request dependencies: the engine, the settings, and the bearer-token guard for changes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from app.config import Settings
from app.errors import Unauthorized


def get_engine_dep(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def token_matches(settings: Settings, presented: str | None) -> bool:
    if settings.api_token is None:
        return True
    expected = settings.api_token.get_secret_value()
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-sweeplab-token")


def require_token(request: Request) -> None:
    """With SWEEPLAB_API_TOKEN set, a change needs `Authorization: Bearer <token>`."""
    if not token_matches(request.app.state.settings, presented_token(request)):
        raise Unauthorized("this server needs an API token for changes: send 'Authorization: Bearer <token>'")


EngineDep = Annotated[Engine, Depends(get_engine_dep)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
Guarded = [Depends(require_token)]
