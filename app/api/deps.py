"""Request dependencies: the engine, the settings, the bearer-token guard for changes, and the
content types each change takes.

They are `async def` on purpose: they only read request state, and a sync dependency would take a
threadpool token per request, which a burst of requests waiting on the database would exhaust.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from app.config import Settings
from app.errors import Unauthorized, UnsupportedMediaType

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
# What an HTML form (or a "simple" cross-site fetch) can send without a CORS preflight.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


async def get_engine_dep(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings_dep(request: Request) -> Settings:
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


async def require_token(request: Request) -> None:
    """With SWEEPLAB_API_TOKEN set, a change needs `Authorization: Bearer <token>`."""
    if not token_matches(request.app.state.settings, presented_token(request)):
        raise Unauthorized("this server needs an API token for changes: send 'Authorization: Bearer <token>'")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def accepted_types(route: object) -> tuple[str, ...] | None:
    """The media types ROUTE takes as its body: those its OpenAPI requestBody lists, JSON for a
    pydantic body, None for a route that takes no body."""
    if not isinstance(route, APIRoute):
        return None
    content = (route.openapi_extra or {}).get("requestBody", {}).get("content")
    if content:
        return tuple(content)
    return JSON_TYPES if route.body_field is not None else None


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "chunked" in request.headers.get("transfer-encoding", "").lower() or bool(length and length != "0")


async def require_content_type(request: Request) -> None:
    """Refuse (415) a body the route does not take. JSON routes take application/json (or a
    +json type), spec routes also YAML; a route without a body refuses form and text bodies. A
    cross-site form post can only send form types, so this holds even when a browser sends no
    Origin; and nothing is ever parsed as JSON that was not sent as JSON."""
    accepted = accepted_types(request.scope.get("route"))
    ctype = media_type(request)
    if accepted is None:
        if _has_body(request) and (ctype in FORM_TYPES or ctype.startswith("text/")):
            raise UnsupportedMediaType(f"this operation takes no body; got a {ctype} body")
        return
    if ctype in accepted or (ctype.endswith("+json") and "application/json" in accepted):
        return
    raise UnsupportedMediaType(f"send the body as {' or '.join(accepted)}, not {ctype or 'no content type'}")


EngineDep = Annotated[Engine, Depends(get_engine_dep)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
Guarded = [Depends(require_token), Depends(require_content_type)]
ContentTyped = [Depends(require_content_type)]
