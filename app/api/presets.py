"""/api/presets: the built-in studies; one call submits a whole study."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from app.api.deps import EngineDep, Guarded, SettingsDep
from app.schemas import SweepPublic
from app.services import presets as preset_service

router = APIRouter(prefix="/api/presets", tags=["presets"])


@router.get("")
def list_presets() -> list[dict[str, Any]]:
    """Each preset's name, its sweeps and its number of runs."""
    return preset_service.list_presets()


@router.post("/{name}", status_code=status.HTTP_201_CREATED, response_model=list[SweepPublic],
             dependencies=Guarded)
def submit_preset(name: str, engine: EngineDep, settings: SettingsDep) -> list[SweepPublic]:
    """Submit every sweep of preset NAME (e.g. `mnist-study`: the whole reference study)."""
    return preset_service.submit_preset(engine, name, settings.max_runs_per_sweep, settings.max_attempts)
