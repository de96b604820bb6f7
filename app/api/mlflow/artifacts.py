"""MLflow's artifact routes (/api/2.0/mlflow-artifacts/): small files uploaded whole, listed and
read back (what they do with sweeplab's rows: app/services/mlflow_artifacts.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.api.artifact_response import artifact_response
from app.api.deps import EngineDep, require_token
from app.errors import EndpointNotFound, SweeplabError
from app.services import mlflow_artifacts as artifact_service

router = APIRouter(include_in_schema=False)


@router.get("/artifacts")
def list_artifacts(engine: EngineDep, path: Annotated[str, Query(max_length=1000)] = "") -> dict[str, Any]:
    return {"files": artifact_service.list_artifacts(engine, path)}


@router.put("/artifacts/{path:path}", dependencies=[Depends(require_token)])
async def upload_artifact(path: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    """One file, its bytes as the body (any content type: a PUT cannot come from another site's form)."""
    try:
        data = await request.body()  # bounded by app.middleware.BodyLimit
    except ClientDisconnect:  # the client's doing, not a server fault (nor a stack trace in the log)
        raise SweeplabError("the connection closed before the whole file arrived; nothing was stored") from None
    content_type = request.headers.get("content-type") or "application/octet-stream"
    await run_in_threadpool(artifact_service.put_artifact, engine, path, content_type, data)
    return {}


@router.get("/artifacts/{path:path}", response_class=Response)
def download_artifact(path: str, engine: EngineDep) -> Response:
    content_type, data = artifact_service.get_artifact(engine, path)
    return artifact_response(data, content_type)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def artifacts_not_here(request: Request) -> None:
    raise EndpointNotFound(f"{request.method} {request.url.path}: artifacts are uploaded whole (PUT), listed and "
                           "read here; not deleted, nor uploaded in parts")
