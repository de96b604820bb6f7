"""One small error hierarchy; handlers answer JSON under /api and an HTML page elsewhere."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

log = logging.getLogger("sweeplab.errors")


class SweeplabError(Exception):
    """Base of every error a user may see; `code` is stable, `message` is for people."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class NotFound(SweeplabError):
    status_code = 404
    code = "not_found"


class SweepNotFound(NotFound):
    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"sweep {sweep_id} not found")


class RunNotFound(NotFound):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} not found")


class InvalidSpec(SweeplabError):
    status_code = 422
    code = "invalid_spec"


class InvalidTransition(SweeplabError):
    status_code = 409
    code = "invalid_transition"


class Unauthorized(SweeplabError):
    status_code = 401
    code = "unauthorized"


class PayloadTooLarge(SweeplabError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(SweeplabError):
    status_code = 415
    code = "unsupported_media_type"


class AlreadyExists(SweeplabError):
    status_code = 409
    code = "already_exists"


class EndpointNotFound(NotFound):
    """A route of a protocol sweeplab speaks in part (MLflow's) that it does not implement."""

    code = "endpoint_not_found"


SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "disk is full")  # full: no room to write now
RETRY_AFTER_SECONDS = 2  # what a 503 asks clients to wait: about one pool timeout
HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_body(code: str, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The error envelope, the one shape of every error under /api: {"error": {"code", "message",
    "fields": [{"loc", "msg"}]}}. `code` is stable (clients branch on it), `message` is for people,
    `fields` names each failing input (empty when the error is not about one)."""
    return {"error": {"code": code, "message": message, "fields": list(fields or [])}}


# MLflow's tracking protocol (app/api/mlflow/) answers errors in MLflow's own shape,
# {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}, since its clients branch on error_code.
MLFLOW_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/")
# sweeplab's code -> (MLflow's error_code, the HTTP status MLflow answers it with; None: sweeplab's).
# Statuses stay below 500 unless the server is at fault: MLflow's client retries 429 and 5xx for minutes.
MLFLOW_ERRORS: dict[str, tuple[str, int | None]] = {
    "not_found": ("RESOURCE_DOES_NOT_EXIST", 404), "endpoint_not_found": ("ENDPOINT_NOT_FOUND", 404),
    "method_not_allowed": ("ENDPOINT_NOT_FOUND", 404), "bad_request": ("INVALID_PARAMETER_VALUE", 400),
    "invalid_spec": ("INVALID_PARAMETER_VALUE", 400), "invalid_input": ("INVALID_PARAMETER_VALUE", 400),
    "already_exists": ("RESOURCE_ALREADY_EXISTS", 400), "invalid_transition": ("INVALID_STATE", 400),
    "unauthorized": ("UNAUTHENTICATED", 401), "cross_site": ("PERMISSION_DENIED", 403),
    "payload_too_large": ("INVALID_PARAMETER_VALUE", 413), "unsupported_media_type": ("BAD_REQUEST", 415),
    "request_timeout": ("BAD_REQUEST", 408), "database_unavailable": ("TEMPORARILY_UNAVAILABLE", 503),
    "internal_error": ("INTERNAL_ERROR", 500),
}


def is_mlflow_path(path: str) -> bool:
    return path.startswith(MLFLOW_PREFIXES)


def mlflow_error(code: str, status: int, message: str) -> tuple[dict[str, str], int]:
    """The body and status of an error on an MLflow route."""
    fallback = ("INVALID_PARAMETER_VALUE" if status < 500 else "INTERNAL_ERROR", status)
    error_code, mlflow_status = MLFLOW_ERRORS.get(code, fallback)
    return {"error_code": error_code, "message": message}, mlflow_status or status


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api") or "text/html" not in request.headers.get("accept", "")


def _answer(request: Request, status: int, code: str, message: str,
            fields: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> Response:
    if is_mlflow_path(request.url.path):
        body, mlflow_status = mlflow_error(code, status, message)
        return JSONResponse(body, status_code=mlflow_status, headers=headers)
    templates = getattr(getattr(request.scope.get("app"), "state", None), "templates", None)
    if _wants_json(request) or templates is None:
        return JSONResponse(error_body(code, message, fields), status_code=status, headers=headers)
    page: Response = templates.TemplateResponse(
        request, "error.html", {"status": status, "code": code, "message": message}, status_code=status,
        headers=headers,
    )
    return page


def error_response_for_scope(scope: Scope, status: int, code: str, message: str,
                             headers: dict[str, str] | None = None) -> Response:
    """The error answer for a request that middleware refuses before routing."""
    return _answer(Request(scope), status, code, message, headers=headers)


def _database_unavailable(request: Request) -> Response:
    return _answer(request, 503, "database_unavailable",
                   "the database is busy or unreachable; try again in a moment",
                   headers={"retry-after": str(RETRY_AFTER_SECONDS)})


def _database_away(exc: Exception) -> bool:
    """Whether EXC means the database cannot be reached now (not that the request is wrong): no
    pooled connection within the pool timeout, a connection refused or dropped, SQLite locked."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, sqlite3.OperationalError):  # also "no such column": a bug, not an outage
        return any(word in str(exc.orig).lower() for word in SQLITE_TRANSIENT)
    return isinstance(exc, OperationalError)  # PostgreSQL: connection failures, serialization, shutdown


MAX_MESSAGE_FIELDS = 5  # an envelope's message names this many failing fields; `fields` has them all


def _printable(text: str) -> str:
    """TEXT as JSON can carry it to any client: a lone surrogate (from a key the client sent)
    escaped, as it cannot be encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_fields(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic's errors as the envelope's fields: `loc` is a dotted path, a body field's as it
    stands in the body (`epoch`, `config.lr`: the same as a spec's fields), a parameter's after
    where it is sent (`query.keys.0`, `path.sweep_id`); `msg` without pydantic's "Value error, "."""
    fields = []
    for e in errors:
        parts = [str(p) for p in e.get("loc", ())]
        if parts[:1] == ["body"]:
            parts = parts[1:] or ["body"]
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        fields.append({"loc": _printable(".".join(parts) or "input"), "msg": _printable(msg)})
    return fields


def fields_message(fields: list[dict[str, str]]) -> str:
    """One line for people: the first few fields, `loc: msg; ...`."""
    named = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields[:MAX_MESSAGE_FIELDS])
    more = len(fields) - MAX_MESSAGE_FIELDS
    return (named + (f" (and {more} more)" if more > 0 else "")) or "invalid input"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SweeplabError)
    async def _sweeplab_error(request: Request, exc: SweeplabError) -> Response:
        return _answer(request, exc.status_code, exc.code, exc.message, exc.fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "http_error")
        return _answer(request, exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        fields = validation_fields(exc.errors())
        return _answer(request, 422, "invalid_input", fields_message(fields), fields)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> Response:
        # An id or number too large for the database's integer columns (SQLite raises OverflowError,
        # PostgreSQL "integer out of range"): the input is invalid, not the server broken.
        return _answer(request, 422, "invalid_input", "a number in the request is out of range")

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: Exception) -> Response:
        # No connection in time, or the database is away: the request may well succeed later.
        if _database_away(exc):
            reason = getattr(exc, "orig", None) or exc
            log.warning("database unavailable on %s %s: %s: %s", request.method, request.url.path,
                        type(reason).__name__, str(reason).splitlines()[0][:200] if str(reason) else "")
            return _database_unavailable(request)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _answer(request, 500, "internal_error", "internal error; the server log has the details")


ERROR_ENVELOPE_SCHEMA: dict[str, Any] = {
    "title": "ErrorEnvelope",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "fields"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "array", "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {"loc": {"type": "string", "description": "dotted path of the field"},
                               "msg": {"type": "string"}},
            }},
        },
    }},
}


RESOURCE_QUERY_PARAMETERS = frozenset({"ids", "configs"})  # query parameters that name stored things
ERROR_REASONS = {
    "400": "bad request", "401": "API token missing or wrong", "403": "a change from another site's page",
    "404": "not found", "408": "the request body took too long to arrive",
    "409": "not allowed in the current state", "413": "request body too large",
    "415": "a content type this operation does not take", "422": "invalid input",
    "503": "the database is busy or unreachable: retry after Retry-After seconds",
}


def _error_codes(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """Every error status this operation can answer (app.middleware's included)."""
    parameters = operation.get("parameters") or []
    takes_input = bool(parameters) or "requestBody" in operation
    codes = ["503"]  # the pool timed out or the database is away (/api/health says so in its own body)
    if "{" in path or any(p.get("in") == "query" and p.get("name") in RESOURCE_QUERY_PARAMETERS
                          for p in parameters):
        codes.append("404")
    if method != "get":
        codes += ["401", "403", "409", "415"]
    if method != "get" or "requestBody" in operation:
        codes += ["408", "413"]
    if takes_input:
        codes += ["400", "422"]
    return codes


def document_error_responses(openapi: dict[str, Any]) -> None:
    """Add the error answers every /api operation can give to an OpenAPI document, so a client
    (or schemathesis' status-code check) finds each documented: 503 everywhere, 404 where the
    path or a query parameter names stored things, 401/403/409/415 for changes, 408/413 with a
    body, 400 and 422 with any input. Every one is the envelope, 422 included: the handlers of
    install_error_handlers answer FastAPI's validation errors in it too."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorEnvelope"] = ERROR_ENVELOPE_SCHEMA
    ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    retry_after = {"Retry-After": {"description": "seconds to wait before trying again",
                                   "schema": {"type": "integer"}}}
    for path, operations in openapi.get("paths", {}).items():
        if not path.startswith("/api"):
            continue
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code in _error_codes(path, method, operation):
                answer = responses.setdefault(code, {"description": ERROR_REASONS[code]})
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if schema is None or code == "422":  # FastAPI's own 422 schema (`detail`) is never answered
                    answer["content"] = {"application/json": {"schema": dict(ref)}}
                if code == "503":
                    answer.setdefault("headers", retry_after)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in json.dumps(openapi):
            components.pop(unused, None)


__all__ = [
    "AlreadyExists",
    "EndpointNotFound",
    "InvalidSpec",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "RunNotFound",
    "SweepNotFound",
    "SweeplabError",
    "Unauthorized",
    "UnsupportedMediaType",
    "document_error_responses",
    "error_body",
    "error_response_for_scope",
    "install_error_handlers",
]
