"""/api/runs: read a run, its metrics and artifacts; cancel it."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.api.artifact_response import artifact_response
from app.api.deps import EngineDep, Guarded
from app.schemas import ArtifactInfo, RunMetrics, RunPublic
from app.services import runs as run_service
from app.spec import StoredText

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.get("/{run_id}", response_model=RunPublic)
def read_run(run_id: int, engine: EngineDep) -> RunPublic:
    return run_service.read_run(engine, run_id)


@router.get("/{run_id}/metrics", response_model=RunMetrics)
def read_run_metrics(run_id: int, engine: EngineDep, keys: list[StoredText] | None = Query(None)) -> RunMetrics:
    """Columnar series per key: {"epochs": [...], "values": [...]}; NaN/inf as null."""
    return run_service.run_metrics(engine, run_id, keys)


@router.post("/{run_id}/cancel", response_model=RunPublic, dependencies=Guarded,
             responses={409: {"description": "the run already ended"}})
def cancel_run(run_id: int, engine: EngineDep) -> RunPublic:
    return run_service.cancel_run(engine, run_id)


@router.get("/{run_id}/artifacts", response_model=list[ArtifactInfo])
def list_run_artifacts(run_id: int, engine: EngineDep) -> list[ArtifactInfo]:
    return run_service.list_artifacts(engine, run_id)


@router.get("/{run_id}/artifacts/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def read_run_artifact(run_id: int, name: str, engine: EngineDep) -> Response:
    content_type, data = run_service.read_artifact(engine, run_id, name)
    headers = {}
    if name == "model.keras":
        headers["content-disposition"] = f'attachment; filename="run-{run_id}.keras"'
    return artifact_response(data, content_type, headers)
