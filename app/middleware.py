"""Pure ASGI guards that run before routing, parsing or any database work.

`BodyLimit` counts the bytes actually received (a chunked body has no Content-Length to check up
front) and bounds the time spent receiving them, so a client can neither make the server buffer
a huge body nor hold a request open by trickling one (slow loris). `CrossSiteGuard` refuses a
change that a browser makes on behalf of another site's page: without a token, the only thing
standing between a visitor's browser and the queue is the `Origin` (or `Referer`) it sends.

Both answer with the error envelope (or the HTML error page) of app.errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response_for_scope

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_READ_SECONDS = 30.0  # a 1 MB body in 30 s is 33 KB/s: any real client is faster
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class BodyRefused(HTTPException):
    """Raised from `receive()` when a body passes the limit or its time. An HTTPException, so
    FastAPI's body parser passes it on unchanged and app.errors answers it with its own code."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code, message)
        self.code = code


class BodyLimit:
    """Refuse request bodies over MAX_BYTES (413) or still arriving after READ_SECONDS (408),
    counted on the bytes received. Whenever the answer goes out before the whole body came in
    (refused, or a route that reads none), the connection is closed after it, so the rest of the
    body is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_seconds: float = BODY_READ_SECONDS) -> None:
        self.app, self.max_bytes, self.read_seconds = app, max_bytes, read_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _refuse(scope, send, self._too_large())
            return
        has_body = "chunked" in headers.get("transfer-encoding", "").lower() or (length.isdigit() and int(length) > 0)
        body = _BoundedBody(receive, self.max_bytes, time.monotonic() + self.read_seconds, self._too_large,
                            complete=not has_body)
        started = False

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # Answered before the body was read (refused, or a route that takes none): close
                # the connection rather than let the server read and drop the rest of it.
                if body.refused or not body.complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, body.receive, send_closing)
        except BodyRefused as exc:  # raised where no handler answered it (e.g. a streaming response)
            if not started:
                await _refuse(scope, send, exc)

    def _too_large(self) -> BodyRefused:
        return BodyRefused(413, "payload_too_large", f"request body over {self.max_bytes} bytes")


class _BoundedBody:
    """A `receive` that counts body bytes and enforces a deadline until the body is complete."""

    def __init__(self, receive: Receive, max_bytes: int, deadline: float,
                 too_large: Callable[[], BodyRefused], complete: bool) -> None:
        self._receive, self._max, self._deadline, self._too_large = receive, max_bytes, deadline, too_large
        self.received, self.complete, self.refused = 0, complete, False

    async def receive(self) -> Message:
        if self.refused:  # whoever asks again (a disconnect listener) hears the client is gone
            return {"type": "http.disconnect"}
        if self.complete:
            return await self._receive()
        message: Message | None = None
        with anyio.move_on_after(max(0.0, self._deadline - time.monotonic())):
            message = await self._receive()
        if message is None:
            self.refused = True
            raise BodyRefused(408, "request_timeout", "the request body took too long to arrive")
        if message["type"] != "http.request":
            self.complete = True
            return message
        self.received += len(message.get("body", b""))
        if self.received > self._max:
            self.refused = True
            raise self._too_large()
        self.complete = not message.get("more_body", False)
        return message


class CrossSiteGuard:
    """Refuse changes (POST, PUT, PATCH, DELETE) that another site's page makes a browser send:
    its `Origin`, or without one its `Referer`, names another origin than the `Host` asked for
    (403 `cross_site`). Clients that are not browsers send neither and pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            reason = cross_site_reason(Headers(scope=scope), scope.get("scheme", "http"))
            if reason:
                await _refuse(scope, send, HTTPException(403, reason), code="cross_site")
                return
        await self.app(scope, receive, send)


def cross_site_reason(headers: Headers, scheme: str) -> str | None:
    """Why this request comes from another site, or None when it does not (or cannot tell)."""
    if headers.get("sec-fetch-site") == "cross-site":
        return "changes are refused from other sites' pages"
    origin = headers.get("origin")
    source = origin if origin is not None else headers.get("referer")
    if source is None:
        return None
    hosts = [h for h in (headers.get("host"), headers.get("x-forwarded-host")) if h]
    if not any(_same_origin(source, host.split(",")[0].strip(), scheme) for host in hosts):
        what = "Origin" if origin is not None else "Referer"
        return f"changes are refused from other sites' pages ({what} is not this server)"
    return None


def _same_origin(source: str, host: str, scheme: str) -> bool:
    """Whether the URL SOURCE (an Origin or Referer) points at HOST (a Host header). A Host
    without a port matches either default port, since a TLS proxy may stand in front."""
    try:
        src = urlsplit(source)
        dst = urlsplit(f"//{host}")
        src_port = src.port or DEFAULT_PORTS.get(src.scheme)
        dst_port = dst.port
    except ValueError:  # "null", a malformed URL or port
        return False
    if not src.hostname or src.hostname != dst.hostname:
        return False
    if dst_port is None:
        return src_port in (DEFAULT_PORTS.get(scheme), 80, 443)
    return src_port == dst_port


async def _refuse(scope: Scope, send: Send, exc: HTTPException, code: str | None = None) -> None:
    code = code or str(getattr(exc, "code", "http_error"))
    response = error_response_for_scope(scope, exc.status_code, code,
                                        str(exc.detail), headers={"connection": "close"})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
