"""One small error hierarchy; handlers answer JSON under /api and an HTML page elsewhere."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _answer(request, 500, "internal_error", "internal error; the server log has the details")


__all__ = [
    "InvalidSpec",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "RunNotFound",
    "SweepNotFound",
    "SweeplabError",
    "Unauthorized",
    "error_body",
    "install_error_handlers",
]
