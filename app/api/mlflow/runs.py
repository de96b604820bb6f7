"""MLflow's runs/ routes of a run's life and lookup: create, get, update (rename, end), search
(what they do with sweeplab's external runs: app/services/mlflow_runs.py). What a run logs:
app/api/mlflow/run_data.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field, StringConstraints

from app.api.deps import ContentTyped, EngineDep, Guarded, SettingsDep
from app.api.mlflow.bodies import MAX_BATCH_TAGS, Lenient, RunRef, Search, TagIn, from_query, paged, tags_of
from app.services import mlflow_runs as service
from app.services.mlflow_search import MAX_RESULTS


class RunCreate(Lenient):
    experiment_id: str | None = Field(default=None, max_length=20)
    user_id: str | None = Field(default=None, max_length=200)
    start_time: int | None = None
    run_name: str | None = Field(default=None, max_length=250)
    tags: list[TagIn] = Field(default_factory=list, max_length=MAX_BATCH_TAGS)


class RunUpdate(RunRef):
    status: str | None = Field(default=None, max_length=30)
    end_time: int | None = None
    run_name: str | None = Field(default=None, max_length=250)


class RunSearch(Search):
    experiment_ids: list[Annotated[str, StringConstraints(max_length=20)]] = Field(default_factory=list,
                                                                                  max_length=100)
    run_view_type: str | None = None


router = APIRouter(include_in_schema=False)


@router.post("/runs/create", dependencies=Guarded)
def create_run(body: RunCreate, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    return {"run": service.create_run(engine, body.experiment_id, body.user_id, body.run_name, tags_of(body.tags),
                                      settings.max_runs_per_sweep)}


@router.get("/runs/get")
def get_run(engine: EngineDep, run_id: Annotated[str | None, Query(max_length=100)] = None,
            run_uuid: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    return {"run": service.get_run(engine, run_id or run_uuid or "")}


@router.post("/runs/update", dependencies=Guarded)
def update_run(body: RunUpdate, engine: EngineDep) -> dict[str, Any]:
    return {"run_info": service.update_run(engine, body.rid, body.status, body.run_name)}


def _search_runs(engine: Any, body: RunSearch) -> dict[str, Any]:
    view = (body.run_view_type or "ACTIVE_ONLY").upper()
    items, token = service.search_runs(engine, body.experiment_ids, body.filter, body.order_by, body.max_results,
                                       body.page_token, view)
    return paged("runs", items, token)


@router.post("/runs/search", dependencies=ContentTyped)
def search_runs(body: RunSearch, engine: EngineDep) -> dict[str, Any]:
    return _search_runs(engine, body)


@router.get("/runs/search")
def search_runs_get(engine: EngineDep, experiment_ids: Annotated[list[str] | None, Query(max_length=100)] = None,
                    filter: Annotated[str | None, Query(max_length=2000)] = None,
                    max_results: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = 1000,
                    order_by: Annotated[list[str] | None, Query(max_length=20)] = None,
                    page_token: Annotated[str | None, Query(max_length=20)] = None,
                    run_view_type: Annotated[str | None, Query(max_length=20)] = None) -> dict[str, Any]:
    body = from_query(RunSearch, experiment_ids=experiment_ids or [], filter=filter, max_results=max_results,
                      order_by=order_by or [], page_token=page_token, run_view_type=run_view_type)
    return _search_runs(engine, body)
