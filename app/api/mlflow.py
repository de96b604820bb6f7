"""MLflow's tracking REST protocol, the part its clients use to log runs, so that a script or
`mlflow.tensorflow.autolog()` logs into sweeplab with only MLFLOW_TRACKING_URI set.

Routes live under /api/2.0/mlflow/ (the Python client's) and /ajax-api/2.0/mlflow/ (MLflow's web
UI's), answer MLflow's JSON and its error shape, {"error_code": "RESOURCE_DOES_NOT_EXIST",
"message": ...} (app.errors answers every error under these prefixes so, validation and middleware
refusals included). What each route does with sweeplab's rows: app/services/mlflow_runs.py.
Changes take the API token (`MLFLOW_TRACKING_TOKEN` is sent as `Authorization: Bearer`) and a JSON
body; reads are open, as the rest of sweeplab's. A route the client may call that is not here
answers ENDPOINT_NOT_FOUND naming it; logged models are not stored by this server
(ENDPOINT_NOT_FOUND, saying so), small artifacts are (app/services/mlflow_artifacts.py), and
runs/log-inputs is accepted and dropped, so autolog's dataset logging does not fail. The routes
are not in sweeplab's OpenAPI document: MLflow's documents them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool

from app.api.artifact_response import artifact_response
from app.api.deps import ContentTyped, EngineDep, Guarded, SettingsDep, require_token
from app.errors import EndpointNotFound, InvalidSpec
from app.services import mlflow_artifacts as artifact_service
from app.services import mlflow_experiments as experiments
from app.services import mlflow_runs as service
from app.services.mlflow_search import MAX_RESULTS
from app.text import first_unencodable

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts"
MAX_BATCH_METRICS = 1000  # MLflow's own limits on one runs/log-batch
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_ITEMS = 1000
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
NOT_STORED = ("models are not stored by this server (it keeps metrics, params, tags and small artifacts); "
              "log with mlflow.tensorflow.autolog(log_models=False) and keep model files yourself")

Printable = r"^[^\x00-\x1f\x7f]+$"
Key = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=Printable)]
MetricKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=Printable)]
Text = Annotated[str, StringConstraints(max_length=MAX_TAG_CHARS)]
NON_FINITE = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}


class _Lenient(BaseModel):
    """MLflow's clients send fields sweeplab has no use for (model_id, dataset_digest, ...): ignored."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _storable(self) -> _Lenient:
        """Text both databases store: no lone surrogate (JSON "\\ud800"), no NUL (PostgreSQL's text)."""
        data = self.model_dump()
        where = first_unencodable(data)
        if where is not None:
            raise ValueError(f"{where}: text with a lone surrogate character cannot be stored")
        if _holds_nul(data):
            raise ValueError("text with a NUL character cannot be stored")
        return self


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_holds_nul(v) for v in value)


class _RunRef(_Lenient):
    run_id: str | None = Field(default=None, max_length=100)
    run_uuid: str | None = Field(default=None, max_length=100)

    @property
    def rid(self) -> str:
        return self.run_id or self.run_uuid or ""


class TagIn(_Lenient):
    key: Key
    value: Text = ""


class ParamIn(_Lenient):
    key: Key
    value: Annotated[str, StringConstraints(max_length=MAX_PARAM_CHARS)] = ""


class MetricIn(_Lenient):
    key: MetricKey
    value: StrictFloat | StrictInt | StrictStr
    timestamp: int | None = None
    step: int | None = Field(default=None, ge=0, le=service.MAX_EPOCH,
                             description="the epoch; none (or 0 once epoch 0 is taken): the key's next epoch")

    def point(self) -> service.MetricPoint:
        if not isinstance(self.value, str):
            return service.MetricPoint(self.key, float(self.value), self.step, self.timestamp)
        text = self.value.strip().lower()
        try:
            value = NON_FINITE[text] if text in NON_FINITE else float(text)
        except ValueError:
            raise InvalidSpec(f"metrics.{self.key}: value must be a number, not {self.value[:50]!r}",
                              fields=[{"loc": f"metrics.{self.key}.value", "msg": "must be a number"}]) from None
        return service.MetricPoint(self.key, value, self.step, self.timestamp)


def _tags(items: list[TagIn]) -> dict[str, str]:
    return {t.key: t.value for t in items}


def _params(items: list[ParamIn]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in items:
        if p.key in out and out[p.key] != p.value:
            raise InvalidSpec(f"params.{p.key}: given twice with different values in one request",
                              fields=[{"loc": f"params.{p.key}", "msg": "given twice"}])
        out[p.key] = p.value
    return out


class ExperimentCreate(_Lenient):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    artifact_location: str | None = None
    tags: list[TagIn] = Field(default_factory=list, max_length=MAX_BATCH_TAGS)


class Search(_Lenient):
    filter: str | None = Field(default=None, max_length=2000)
    max_results: int = Field(default=1000, ge=1, le=MAX_RESULTS)
    order_by: list[Annotated[str, StringConstraints(max_length=300)]] = Field(default_factory=list, max_length=20)
    page_token: str | None = Field(default=None, max_length=20)


class ExperimentSearch(Search):
    view_type: str | None = None


class RunCreate(_Lenient):
    experiment_id: str | None = Field(default=None, max_length=20)
    user_id: str | None = Field(default=None, max_length=200)
    start_time: int | None = None
    run_name: str | None = Field(default=None, max_length=250)
    tags: list[TagIn] = Field(default_factory=list, max_length=MAX_BATCH_TAGS)


class RunUpdate(_RunRef):
    status: str | None = Field(default=None, max_length=30)
    end_time: int | None = None
    run_name: str | None = Field(default=None, max_length=250)


class RunSearch(Search):
    experiment_ids: list[Annotated[str, StringConstraints(max_length=20)]] = Field(default_factory=list,
                                                                                  max_length=100)
    run_view_type: str | None = None


class LogBatch(_RunRef):
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


class LogMetric(_RunRef, MetricIn):
    pass


class LogParam(_RunRef, ParamIn):
    pass


class SetTag(_RunRef, TagIn):
    pass


class DeleteTag(_RunRef):
    key: Key


def _paged(name: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    return {name: items, **({"next_page_token": token} if token else {})}


tracking = APIRouter(include_in_schema=False)


@tracking.post("/experiments/create", dependencies=Guarded)
def create_experiment(body: ExperimentCreate, engine: EngineDep) -> dict[str, Any]:
    return {"experiment_id": experiments.create_experiment(engine, body.name, _tags(body.tags))}


@tracking.get("/experiments/get")
def get_experiment(engine: EngineDep, experiment_id: Annotated[str, Query(max_length=20)] = "") -> dict[str, Any]:
    return {"experiment": experiments.get_experiment(engine, experiment_id)}


@tracking.get("/experiments/get-by-name")
def get_experiment_by_name(engine: EngineDep,
                           experiment_name: Annotated[str, Query(min_length=1, max_length=200)]) -> dict[str, Any]:
    return {"experiment": experiments.get_experiment_by_name(engine, experiment_name)}


def _search_experiments(engine: Any, body: ExperimentSearch) -> dict[str, Any]:
    items, token = experiments.search_experiments(engine, body.filter, body.order_by, body.max_results, body.page_token)
    return _paged("experiments", items, token)


@tracking.post("/experiments/search", dependencies=ContentTyped)
def search_experiments(body: ExperimentSearch, engine: EngineDep) -> dict[str, Any]:
    return _search_experiments(engine, body)


@tracking.get("/experiments/search")
def search_experiments_get(engine: EngineDep, filter: Annotated[str | None, Query(max_length=2000)] = None,
                           max_results: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = 1000,
                           order_by: Annotated[list[str] | None, Query(max_length=20)] = None,
                           page_token: Annotated[str | None, Query(max_length=20)] = None) -> dict[str, Any]:
    body = ExperimentSearch(filter=filter, max_results=max_results, order_by=order_by or [], page_token=page_token)
    return _search_experiments(engine, body)


@tracking.post("/runs/create", dependencies=Guarded)
def create_run(body: RunCreate, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    return {"run": service.create_run(engine, body.experiment_id, body.user_id, body.run_name, _tags(body.tags),
                                      settings.max_runs_per_sweep)}


@tracking.get("/runs/get")
def get_run(engine: EngineDep, run_id: Annotated[str | None, Query(max_length=100)] = None,
            run_uuid: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    return {"run": service.get_run(engine, run_id or run_uuid or "")}


@tracking.post("/runs/update", dependencies=Guarded)
def update_run(body: RunUpdate, engine: EngineDep) -> dict[str, Any]:
    return {"run_info": service.update_run(engine, body.rid, body.status, body.run_name)}


def _search_runs(engine: Any, body: RunSearch) -> dict[str, Any]:
    view = (body.run_view_type or "ACTIVE_ONLY").upper()
    items, token = service.search_runs(engine, body.experiment_ids, body.filter, body.order_by, body.max_results,
                                       body.page_token, view)
    return _paged("runs", items, token)


@tracking.post("/runs/search", dependencies=ContentTyped)
def search_runs(body: RunSearch, engine: EngineDep) -> dict[str, Any]:
    return _search_runs(engine, body)


@tracking.get("/runs/search")
def search_runs_get(engine: EngineDep, experiment_ids: Annotated[list[str] | None, Query(max_length=100)] = None,
                    filter: Annotated[str | None, Query(max_length=2000)] = None,
                    max_results: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = 1000,
                    order_by: Annotated[list[str] | None, Query(max_length=20)] = None,
                    page_token: Annotated[str | None, Query(max_length=20)] = None,
                    run_view_type: Annotated[str | None, Query(max_length=20)] = None) -> dict[str, Any]:
    body = RunSearch(experiment_ids=experiment_ids or [], filter=filter, max_results=max_results,
                     order_by=order_by or [], page_token=page_token, run_view_type=run_view_type)
    return _search_runs(engine, body)


@tracking.post("/runs/log-batch", dependencies=Guarded)
def log_batch(body: LogBatch, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [m.point() for m in body.metrics], _params(body.params), _tags(body.tags),
                      settings.max_runs_per_sweep)
    return {}


@tracking.post("/runs/log-metric", dependencies=Guarded)
def log_metric(body: LogMetric, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [body.point()], {}, {}, settings.max_runs_per_sweep)
    return {}


@tracking.post("/runs/log-parameter", dependencies=Guarded)
def log_param(body: LogParam, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [], {body.key: body.value}, {}, settings.max_runs_per_sweep)
    return {}


@tracking.post("/runs/set-tag", dependencies=Guarded)
def set_tag(body: SetTag, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    service.log_batch(engine, body.rid, [], {}, {body.key: body.value}, settings.max_runs_per_sweep)
    return {}


@tracking.post("/runs/delete-tag", dependencies=Guarded)
def delete_tag(body: DeleteTag, engine: EngineDep) -> dict[str, Any]:
    service.delete_tag(engine, body.rid, body.key)
    return {}


@tracking.get("/metrics/get-history")
def metric_history(engine: EngineDep, metric_key: Annotated[str, Query(min_length=1, max_length=250)],
                   run_id: Annotated[str | None, Query(max_length=100)] = None,
                   run_uuid: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    return {"metrics": service.metric_history(engine, run_id or run_uuid or "", metric_key)}


class LogInputs(_RunRef):
    datasets: list[Any] = Field(default_factory=list, max_length=1000)


@tracking.post("/runs/log-inputs", dependencies=Guarded)
def log_inputs(body: LogInputs, engine: EngineDep) -> dict[str, Any]:
    """Datasets a run used (autolog's log_datasets): accepted and dropped, once the run is known."""
    service.run_exists(engine, body.rid)
    return {}


@tracking.api_route("/runs/log-model", methods=["POST"], dependencies=[Depends(require_token)])
@tracking.api_route("/logged-models", methods=["GET", "POST"], dependencies=[Depends(require_token)])
@tracking.api_route("/logged-models/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
def models_not_stored(request: Request) -> None:
    raise EndpointNotFound(f"{request.url.path}: {NOT_STORED}")


@tracking.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_implemented(request: Request) -> None:
    raise EndpointNotFound(f"{request.method} {request.url.path}: this server speaks the part of MLflow's tracking "
                           "protocol that logs and reads runs (README: Coming from MLflow); not this endpoint")


artifacts = APIRouter(include_in_schema=False)


@artifacts.get("/artifacts")
def list_artifacts(engine: EngineDep, path: Annotated[str, Query(max_length=1000)] = "") -> dict[str, Any]:
    return {"files": artifact_service.list_artifacts(engine, path)}


@artifacts.put("/artifacts/{path:path}", dependencies=[Depends(require_token)])
async def upload_artifact(path: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    """One file, its bytes as the body (any content type: a PUT cannot come from another site's form)."""
    data = await request.body()  # bounded by app.middleware.BodyLimit
    content_type = request.headers.get("content-type") or "application/octet-stream"
    await run_in_threadpool(artifact_service.put_artifact, engine, path, content_type, data)
    return {}


@artifacts.get("/artifacts/{path:path}", response_class=Response)
def download_artifact(path: str, engine: EngineDep) -> Response:
    content_type, data = artifact_service.get_artifact(engine, path)
    return artifact_response(data, content_type)


@artifacts.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def artifacts_not_here(request: Request) -> None:
    raise EndpointNotFound(f"{request.method} {request.url.path}: artifacts are uploaded whole (PUT), listed and "
                           "read here; not deleted, nor uploaded in parts")


def _mounted() -> APIRouter:
    """Every route under each of its prefixes, as plain routes (so whoever walks `router.routes`,
    tests/e2e/test_tokens.py does, sees each)."""
    mounted = APIRouter(include_in_schema=False)
    for prefix, source in [*((p, tracking) for p in PREFIXES), (ARTIFACTS_PREFIX, artifacts)]:
        for route in source.routes:
            assert isinstance(route, APIRoute)
            mounted.add_api_route(prefix + route.path, route.endpoint, methods=sorted(route.methods or ()),
                                  dependencies=list(route.dependencies), response_class=route.response_class,
                                  name=f"mlflow {prefix}{route.path}", include_in_schema=False)
    return mounted


router = _mounted()
