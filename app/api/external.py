"""External runs over REST: create (or join) a sweep and start a run, log epochs, send heartbeats
while an epoch is long, finish.

Used by `sweeplab.SweeplabCallback`; any HTTP client can do the same. Token-protected like every
other change. Only runs created here (source 'external') accept epochs, heartbeats and finish; a
run with no epoch or heartbeat for SWEEPLAB_EXTERNAL_STALE_SECONDS is ended by the reaper.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field, StringConstraints, field_validator

from app.api.deps import EngineDep, Guarded, SettingsDep
from app.models import RunStatus
from app.schemas import MAX_EPOCH, EpochCreate, RunPublic, StrictInput
from app.services import external as external_service
from app.statuses import ExternalEnding
from app.text import first_unencodable, not_blank

router = APIRouter(tags=["external runs"])

MAX_PROVENANCE_KEYS = 50
MAX_PROVENANCE_CHARS = 1024
PROVENANCE_KEY = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
ProvenanceKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=PROVENANCE_KEY.pattern)]
# A small flat record of short values (app.services.provenance names the fields a worker records).
ProvenanceValue = (Annotated[bool, Field(strict=True)] | Annotated[int, Field(strict=True, ge=-2**63, le=2**63 - 1)]
                   | float | Annotated[str, StringConstraints(max_length=MAX_PROVENANCE_CHARS)] | None)


def _storable(value: str | None) -> str | None:
    """Text both databases store alike: PostgreSQL's text refuses NUL (SQLite would keep it)."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _first_nul(value: Any, where: str) -> str | None:
    """The path of the first key or string in VALUE holding NUL (a label column would refuse it)."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str) and "\x00" in k:
            return f"{where}.<key>"
        found = _first_nul(v, f"{where}.{k}")
        if found is not None:
            return found
    return None


class ExternalRunCreate(StrictInput):
    """A run of CONFIG with SEED in the external sweep named SWEEP (created on first use)."""

    sweep: str = Field(min_length=1, max_length=200, description="sweep name: runs with the same name join it")
    study: str | None = Field(default=None, max_length=200)
    dataset: str | None = Field(default=None, min_length=1, max_length=50,
                                description="shown on the dashboard; default 'external'")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="settings of the run: equal dicts are one config (replicates)")
    seed: int = Field(ge=0, le=2**63 - 1)
    epochs: int = Field(default=0, ge=0, le=MAX_EPOCH, description="planned epochs, when known")
    client_token: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{8,64}$",
                                     description="idempotency key: a retried create returns the same run")
    host: str | None = Field(default=None, max_length=200, description="where it trains, shown as its worker")
    provenance: dict[ProvenanceKey, ProvenanceValue] | None = Field(
        default=None, max_length=MAX_PROVENANCE_KEYS,
        description=f"where and how it trains (python, tensorflow, keras, numpy, host, cpu, gpu, dataset_sha256, "
                    f"...): at most {MAX_PROVENANCE_KEYS} keys, each value a number, boolean, null or text of at "
                    f"most {MAX_PROVENANCE_CHARS} characters")

    @field_validator("sweep", "study")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return not_blank(value)

    @field_validator("sweep", "study", "dataset", "host")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _storable(value)

    @field_validator("config")
    @classmethod
    def _config_storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # A lone surrogate (JSON "\ud800") in a key or a value passes as a str here but neither
        # database can encode it: name where it is (the path holds only encodable keys).
        where = first_unencodable(value, "config")
        if where is not None:
            raise ValueError(f"{where}: text with a lone surrogate character cannot be stored")
        where = _first_nul(value, "config")
        if where is not None:
            raise ValueError(f"{where}: must not contain a NUL character")
        return value

    @field_validator("provenance", mode="before")
    @classmethod
    def _provenance_small(cls, value: Any) -> Any:
        """One readable error naming the key, before the typed check (whose union errors name every
        type a value is not)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("must be an object of short values")
        if len(value) > MAX_PROVENANCE_KEYS:
            raise ValueError(f"at most {MAX_PROVENANCE_KEYS} keys ({len(value)} given)")
        for key, item in value.items():
            if not isinstance(key, str) or not PROVENANCE_KEY.match(key):
                raise ValueError(f"key {str(key)[:40]!r}: 1 to 100 characters, no control characters")
            if isinstance(item, str):
                if len(item) > MAX_PROVENANCE_CHARS:
                    raise ValueError(f"provenance.{key}: at most {MAX_PROVENANCE_CHARS} characters")
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"provenance.{key}: not a finite number")
            elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
                raise ValueError(f"provenance.{key}: out of range")
            elif item is not None and not isinstance(item, bool | int | float):
                raise ValueError(f"provenance.{key}: must be text, a number, a boolean or null")
        where = first_unencodable(value, "provenance") or _first_nul(value, "provenance")
        if where is not None:
            raise ValueError(f"{where}: text must not hold a NUL or a lone surrogate character")
        return value


class EpochStored(BaseModel):
    run_id: int
    epoch: int
    stored: int = Field(description="metric rows newly stored; 0 when the post repeated an earlier one")
    cancel_requested: bool = Field(description="someone asked to stop this run: the trainer should stop")


class HeartbeatStored(BaseModel):
    run_id: int
    cancel_requested: bool = Field(description="someone asked to stop this run: the trainer should stop")
    heartbeat_seconds: float = Field(description="how often the server expects a heartbeat while no epoch ends")


class RunFinish(StrictInput):
    status: ExternalEnding
    error: str | None = Field(default=None, max_length=10_000)

    @field_validator("error")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _storable(value)


@router.post("/api/external/runs", status_code=status.HTTP_201_CREATED, response_model=RunPublic,
             dependencies=Guarded, responses={200: {"description": "the run a retried create made"}})
def create_external_run(body: ExternalRunCreate, response: Response, engine: EngineDep,
                        settings: SettingsDep) -> RunPublic:
    """Start a run trained outside sweeplab's workers, in the external sweep named `sweep`."""
    req = external_service.ExternalRunRequest(
        sweep=body.sweep, config=body.config, seed=body.seed, epochs=body.epochs, study=body.study,
        dataset=body.dataset, client_token=body.client_token, host=body.host,
        provenance=body.provenance)
    run, created = external_service.create_external_run(engine, req, settings.max_runs_per_sweep)
    if not created:
        response.status_code = status.HTTP_200_OK
    return run


@router.post("/api/runs/{run_id}/epochs", response_model=EpochStored, dependencies=Guarded,
             responses={409: {"description": "not an external run, or it already ended"}})
def log_run_epoch(run_id: int, body: EpochCreate, engine: EngineDep) -> EpochStored:
    """Record an epoch of an external run; repeating a post is a no-op."""
    ack = external_service.record_external_epoch(engine, run_id, body.epoch, body.values(), body.seconds)
    return EpochStored(run_id=ack.run_id, epoch=ack.epoch, stored=ack.stored, cancel_requested=ack.cancel_requested)


@router.post("/api/runs/{run_id}/heartbeat", response_model=HeartbeatStored, dependencies=Guarded,
             responses={404: {"description": "no such run"},
                        409: {"description": "not an external run, or it already ended"}})
def heartbeat_run(run_id: int, engine: EngineDep, settings: SettingsDep) -> HeartbeatStored:
    """The client of an external run is alive: without an epoch or a heartbeat for
    SWEEPLAB_EXTERNAL_STALE_SECONDS the run ends failed ("the client stopped reporting")."""
    ack = external_service.heartbeat_external_run(engine, run_id)
    return HeartbeatStored(run_id=ack.run_id, cancel_requested=ack.cancel_requested,
                           heartbeat_seconds=external_service.heartbeat_seconds(settings.external_stale_seconds))


@router.post("/api/runs/{run_id}/finish", response_model=RunPublic, dependencies=Guarded,
             responses={409: {"description": "not an external run, or it already ended otherwise"}})
def finish_run(run_id: int, body: RunFinish, engine: EngineDep) -> RunPublic:
    """End an external run: succeeded, failed (with its error) or cancelled."""
    return external_service.finish_external_run(engine, run_id, RunStatus(body.status), body.error)
