"""How any stored artifact is answered. Artifacts of external runs are uploaded by clients (MLflow's
log_artifact) with a content type of their choosing: never let one run script in this origin (a
stored page or SVG would, with same-origin writes). Active types are served as text, nothing is
sniffed, and a sandbox policy keeps any document inert."""

from __future__ import annotations

import re

from fastapi.responses import Response

ACTIVE = re.compile(r"html|xml|svg|javascript|ecmascript|multipart", re.IGNORECASE)
INERT = {"x-content-type-options": "nosniff", "content-security-policy": "sandbox; default-src 'none'"}


def artifact_response(data: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
    if ACTIVE.search(content_type):
        content_type = "text/plain; charset=utf-8"
    return Response(data, media_type=content_type, headers={**INERT, **(headers or {})})
