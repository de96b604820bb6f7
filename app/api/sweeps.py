"""/api/sweeps: submit (JSON or YAML), list, read, cancel, retry; a sweep's runs and configs."""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import APIRouter, Query, Request, status
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.api.deps import JSON_TYPES, YAML_TYPES, ContentTyped, EngineDep, Guarded, SettingsDep, media_type
from app.config import Settings
from app.datasets import check_available
from app.errors import InvalidSpec
from app.layer_shapes import check_layers_fit
from app.models import RunStatus
from app.schemas import ConfigPublic, RunPublic, SweepPublic, SweepsProgress
from app.services import runs as run_service
from app.services import sweeps as sweep_service
from app.spec import SweepSpec, spec_yaml

router = APIRouter(prefix="/api/sweeps", tags=["sweeps"])
MAX_YAML_NODES = 100_000


def _bounded_yaml(text: str) -> Any:
    """Parse YAML safely: no Python objects, and no alias bombs (anchors are refused outright)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if id(n) in seen:  # the composer shares one node object between an anchor and its aliases
                raise InvalidSpec("YAML anchors and aliases are not accepted in sweep specs")
            seen.add(id(n))
            if len(seen) > MAX_YAML_NODES:
                raise InvalidSpec("the YAML document is too large")
            if isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack += [k, v]
            elif isinstance(n, yaml.SequenceNode):
                stack += n.value
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"not valid YAML: {str(exc)[:300]}") from None
    except RecursionError:
        raise InvalidSpec("the YAML document is nested too deeply") from None
    finally:
        loader.dispose()


async def _spec_data(request: Request) -> Any:
    """The spec sent as the body: YAML for the YAML types, else JSON (the route's content-type
    dependency has refused anything else; app.middleware.BodyLimit has bounded its size)."""
    body = await request.body()
    if media_type(request) in YAML_TYPES:
        # In the threadpool: a megabyte of YAML takes the pure-Python parser a while.
        return await run_in_threadpool(_bounded_yaml, body.decode("utf-8", errors="replace"))
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise InvalidSpec(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidSpec("the JSON body is nested too deeply") from None


SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"$ref": "#/components/schemas/SweepSpec"}} for t in JSON_TYPES},
            **{t: {"schema": {"type": "string"}} for t in YAML_TYPES},
        },
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic, dependencies=Guarded,
             openapi_extra=SPEC_BODY, responses={422: {"description": "invalid spec"}})
async def create_sweep(request: Request, engine: EngineDep, settings: SettingsDep) -> SweepPublic:
    """Submit a sweep spec (JSON, or YAML with content-type application/yaml); queues every run."""
    data = await _spec_data(request)
    # Off the event loop: validating a big grid, probing a dataset and waiting for SQLite's write
    # lock would otherwise stall every other request of this server.
    return await run_in_threadpool(_create_sweep, engine, settings, data)


def _check_datasets(spec: SweepSpec, settings: Settings) -> None:
    """Every dataset the spec trains on must be loadable here: refused now, not failed by a worker."""
    for dataset in sorted({spec.dataset, *map(str, spec.grid.get("dataset", []))}):
        reason = check_available(dataset, settings.data_dir)
        if reason:
            raise InvalidSpec(f"dataset: {reason}", [{"loc": "dataset", "msg": reason}])
    check_layers_fit(spec, settings.data_dir)


def _create_sweep(engine: Engine, settings: Settings, data: Any) -> SweepPublic:
    spec = sweep_service.parse_spec(data)
    _check_datasets(spec, settings)
    return sweep_service.create_sweep(engine, spec, settings.max_runs_per_sweep, settings.max_attempts,
                                      settings.lease_seconds)


@router.post("/validate", dependencies=ContentTyped, openapi_extra=SPEC_BODY,
             responses={422: {"description": "invalid spec, with the failing fields"}})
async def validate_sweep(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Check a spec (JSON, or YAML with content-type application/yaml) without submitting it:
    the number of configs and runs it expands to, and the spec with defaults filled in, as JSON
    (`spec`) and as YAML (`yaml`, PyYAML's safe dumper: what the new-sweep page shows and submits)."""
    data = await _spec_data(request)
    # Off the event loop: expanding a big grid and probing a dataset (maybe over the network) block.
    return await run_in_threadpool(_validate, settings, data)


def _validate(settings: Settings, data: Any) -> dict[str, Any]:
    spec = sweep_service.parse_spec(data)
    _check_datasets(spec, settings)
    n_configs = spec.max_configs or 1 if spec.searching else len(spec.combinations())
    if spec.run_count() > settings.max_runs_per_sweep:
        msg = f"the sweep expands to {spec.run_count()} runs; this server accepts at most {settings.max_runs_per_sweep}"
        raise InvalidSpec(msg, [{"loc": "max_configs" if spec.searching else "grid", "msg": msg}])
    filled = spec.filled_in()
    return {"valid": True, "configs": n_configs, "replicates": len(spec.seed_list()), "runs": spec.run_count(),
            "spec": filled, "yaml": spec_yaml(filled)}


@router.get("", response_model=list[SweepPublic])
def list_sweeps(engine: EngineDep, study: str | None = None, status: RunStatus | None = None,
                limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0)) -> list[SweepPublic]:
    """Sweeps, newest first; filter by study, or by a status some of its runs have."""
    return sweep_service.list_sweeps(engine, study, status.value if status else None, limit, offset)


MAX_PROGRESS_SWEEPS = 1000


# Declared before /{sweep_id}, which would otherwise take "progress" for an id.
@router.get("/progress", response_model=SweepsProgress)
def read_progress(engine: EngineDep,
                  ids: list[int] = Query(..., min_length=1, max_length=MAX_PROGRESS_SWEEPS,
                                         description="sweep ids: ids=1&ids=2")) -> SweepsProgress:
    """Runs ended, running, succeeded and failed, epochs done and left: of each sweep and in total."""
    return sweep_service.progress(engine, ids)


@router.get("/{sweep_id}", response_model=SweepPublic)
def read_sweep(sweep_id: int, engine: EngineDep) -> SweepPublic:
    return sweep_service.read_sweep(engine, sweep_id)


@router.get("/{sweep_id}/runs", response_model=list[RunPublic])
def list_sweep_runs(sweep_id: int, engine: EngineDep, status: RunStatus | None = None,
                    config_id: int | None = None, limit: int = Query(10_000, ge=1, le=10_000),
                    offset: int = Query(0, ge=0)) -> list[RunPublic]:
    return run_service.list_runs(engine, sweep_id, status.value if status else None, config_id, limit, offset)


@router.get("/{sweep_id}/configs", response_model=list[ConfigPublic])
def list_sweep_configs(sweep_id: int, engine: EngineDep) -> list[ConfigPublic]:
    return sweep_service.list_configs(engine, sweep_id)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, dependencies=Guarded)
def cancel_sweep(sweep_id: int, engine: EngineDep) -> SweepPublic:
    """Cancel every queued run now and ask running ones to stop within an epoch."""
    return sweep_service.cancel_sweep(engine, sweep_id)


@router.post("/{sweep_id}/retry", response_model=SweepPublic, dependencies=Guarded)
def retry_sweep(sweep_id: int, engine: EngineDep) -> SweepPublic:
    """Queue the sweep's failed and cancelled runs again, from scratch."""
    return sweep_service.retry_failed(engine, sweep_id)
