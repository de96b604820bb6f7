"""What an MLflow run logs, MLflow's run data: the runs/ routes of metrics, params and tags
(log-batch, log-metric, log-parameter, set-tag, delete-tag), metrics/get-history, and
runs/log-inputs, accepted and dropped so that autolog's dataset logging does not fail (what
the writes do with sweeplab's rows: app/services/mlflow_run_logging.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field, model_validator

from app.api.deps import EngineDep, Guarded, SettingsDep
from app.api.mlflow.bodies import (
    MAX_BATCH_ITEMS,
    MAX_BATCH_METRICS,
    MAX_BATCH_PARAMS,
    MAX_BATCH_TAGS,
    Key,
    MetricIn,
    ParamIn,
    RunRef,
    TagIn,
    params_of,
    tags_of,
)
from app.services import mlflow_runs as service


class LogBatch(RunRef):
    metrics: list[MetricIn] = Field(default_factory=list)
    params: list[ParamIn] = Field(default_factory=list)
    tags: list[TagIn] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _within_limits(cls, data: Any) -> Any:
        """MLflow's limits, checked before the items are: a huge batch is refused as a whole."""
        if isinstance(data, dict):
            counts = {k: len(data[k]) for k in ("metrics", "params", "tags") if isinstance(data.get(k), list)}
            for kind, most in (("metrics", MAX_BATCH_METRICS), ("params", MAX_BATCH_PARAMS), ("tags", MAX_BATCH_TAGS)):
                if counts.get(kind, 0) > most:
                    raise ValueError(f"a batch holds at most {most} {kind}; got {counts[kind]}")
            if sum(counts.values()) > MAX_BATCH_ITEMS:
                raise ValueError(f"a batch holds at most {MAX_BATCH_ITEMS} metrics, params and tags in all")
        return data


class LogMetric(RunRef, MetricIn):
    pass


class LogParam(RunRef, ParamIn):
    pass


class SetTag(RunRef, TagIn):
    pass


class DeleteTag(RunRef):
    key: Key


class LogInputs(RunRef):
    # Dropped, so not walked for storable text either (exclude): that walk recursed past Python's
    # limit on datasets nested as deep as the JSON parser allows.
    datasets: list[Any] = Field(default_factory=list, max_length=1000, exclude=True)


router = APIRouter(include_in_schema=False)


@router.post("/runs/log-batch", dependencies=Guarded)
def log_batch(body: LogBatch, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [m.point() for m in body.metrics], params_of(body.params),
                      tags_of(body.tags), settings.max_runs_per_sweep)
    return {}


@router.post("/runs/log-metric", dependencies=Guarded)
def log_metric(body: LogMetric, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [body.point()], {}, {}, settings.max_runs_per_sweep)
    return {}


@router.post("/runs/log-parameter", dependencies=Guarded)
def log_param(body: LogParam, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [], {body.key: body.value}, {}, settings.max_runs_per_sweep)
    return {}


@router.post("/runs/set-tag", dependencies=Guarded)
def set_tag(body: SetTag, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [], {}, {body.key: body.value}, settings.max_runs_per_sweep)
    return {}


@router.post("/runs/delete-tag", dependencies=Guarded)
def delete_tag(body: DeleteTag, engine: EngineDep) -> dict[str, Any]:
    service.delete_tag(engine, body.rid, body.key)
    return {}


@router.get("/metrics/get-history")
def metric_history(engine: EngineDep, metric_key: Annotated[str, Query(min_length=1, max_length=250)],
                   run_id: Annotated[str | None, Query(max_length=100)] = None,
                   run_uuid: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    return {"metrics": service.metric_history(engine, run_id or run_uuid or "", metric_key)}


@router.post("/runs/log-inputs", dependencies=Guarded)
def log_inputs(body: LogInputs, engine: EngineDep) -> dict[str, Any]:
    """Datasets a run used (autolog's log_datasets): accepted and dropped, once the run is known."""
    service.run_exists(engine, body.rid)
    return {}
