"""/api/workers: the live workers (host, pid, the training programs they offer, last heartbeat).
Only names of programs ever travel: what a program runs is the file a worker's operator put in its
folder, never anything the API carries."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep, SettingsDep
from app.schemas import WorkerPublic
from app.services import workers as worker_service

router = APIRouter(prefix="/api/workers", tags=["workers"])


@router.get("", response_model=list[WorkerPublic])
def list_workers(engine: EngineDep, settings: SettingsDep) -> list[WorkerPublic]:
    """Workers whose last heartbeat is recent (within a few leases), oldest first; a worker that
    died without saying so drops out."""
    return worker_service.live_workers(engine, settings.lease_seconds)
