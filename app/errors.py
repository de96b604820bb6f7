"""One small error hierarchy; handlers answer JSON under /api and an HTML page elsewhere."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def error_body(code: str, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The error envelope: {"error": {"code", "message"[, "fields": [{"loc", "msg"}]]}}."""
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api") or "text/html" not in request.headers.get("accept", "")


def _answer(request: Request, status: int, code: str, message: str,
            fields: list[dict[str, str]] | None = None) -> Response:
    if _wants_json(request):
        return JSONResponse(error_body(code, message, fields), status_code=status)
    templates = request.app.state.templates
    return templates.TemplateResponse(
        request, "error.html", {"status": status, "code": code, "message": message}, status_code=status
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SweeplabError)
    async def _sweeplab_error(request: Request, exc: SweeplabError) -> Response:
        return _answer(request, exc.status_code, exc.code, exc.message, exc.fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return _answer(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        if not _wants_json(request):
            first = errors[0] if errors else {"loc": [], "msg": "invalid input"}
            where = ".".join(str(p) for p in first["loc"][1:]) or "input"
            return _answer(request, 422, "invalid_input", f"{where}: {first['msg']}")
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> Response:
        # An id or number too large for the database's integer columns (SQLite raises OverflowError,
        # PostgreSQL "integer out of range"): the input is invalid, not the server broken.
        return _answer(request, 422, "invalid_input", "a number in the request is out of range")

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
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "array", "items": {"type": "object"}},
        },
    }},
}


def document_error_responses(openapi: dict[str, Any]) -> None:
    """Add the error answers every /api operation can give to an OpenAPI document: 404 where the
    path names a resource, 401/409 for changes, 413 with a body, 400 and 422 with any input (422 in
    either shape: FastAPI's `detail` list for malformed parameters, the envelope for a bad spec)."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorEnvelope"] = ERROR_ENVELOPE_SCHEMA
    ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    reasons = {"400": "bad request", "401": "API token missing or wrong", "404": "not found",
               "409": "not allowed in the current state", "413": "request body too large", "422": "invalid input"}
    for path, operations in openapi.get("paths", {}).items():
        if not path.startswith("/api"):
            continue
        for method, operation in operations.items():
            codes = []
            if "{" in path:
                codes.append("404")
            if method != "get":
                codes += ["401", "409"]
            if "requestBody" in operation:
                codes.append("413")
            if operation.get("parameters") or "requestBody" in operation:
                codes += ["400", "422"]
            responses = operation.setdefault("responses", {})
            for code in codes:
                answer = responses.setdefault(code, {"description": reasons[code]})
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if schema is None:
                    answer["content"] = {"application/json": {"schema": dict(ref)}}
                elif code == "422" and schema != ref:
                    answer["content"] = {"application/json": {"schema": {"anyOf": [schema, dict(ref)]}}}


__all__ = [
    "InvalidSpec",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "RunNotFound",
    "SweepNotFound",
    "SweeplabError",
    "Unauthorized",
    "document_error_responses",
    "error_body",
    "install_error_handlers",
]
