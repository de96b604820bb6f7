"""MLflow's experiments/ routes: create, get, get-by-name, search (what they do with sweeplab's
external sweeps: app/services/mlflow_experiments.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field, StringConstraints

from app.api.deps import ContentTyped, EngineDep, Guarded
from app.api.mlflow.bodies import MAX_BATCH_TAGS, Lenient, Search, TagIn, from_query, paged, tags_of
from app.services import mlflow_experiments as experiments
from app.services.mlflow_search import MAX_RESULTS


class ExperimentCreate(Lenient):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    artifact_location: str | None = None
    tags: list[TagIn] = Field(default_factory=list, max_length=MAX_BATCH_TAGS)


class ExperimentSearch(Search):
    view_type: str | None = None


router = APIRouter(include_in_schema=False)


@router.post("/experiments/create", dependencies=Guarded)
def create_experiment(body: ExperimentCreate, engine: EngineDep) -> dict[str, Any]:
    return {"experiment_id": experiments.create_experiment(engine, body.name, tags_of(body.tags))}


@router.get("/experiments/get")
def get_experiment(engine: EngineDep, experiment_id: Annotated[str, Query(max_length=20)] = "") -> dict[str, Any]:
    return {"experiment": experiments.get_experiment(engine, experiment_id)}


@router.get("/experiments/get-by-name")
def get_experiment_by_name(engine: EngineDep,
                           experiment_name: Annotated[str, Query(min_length=1, max_length=200)]) -> dict[str, Any]:
    return {"experiment": experiments.get_experiment_by_name(engine, experiment_name)}


def _search_experiments(engine: Any, body: ExperimentSearch) -> dict[str, Any]:
    items, token = experiments.search_experiments(engine, body.filter, body.order_by, body.max_results, body.page_token)
    return paged("experiments", items, token)


@router.post("/experiments/search", dependencies=ContentTyped)
def search_experiments(body: ExperimentSearch, engine: EngineDep) -> dict[str, Any]:
    return _search_experiments(engine, body)


@router.get("/experiments/search")
def search_experiments_get(engine: EngineDep, filter: Annotated[str | None, Query(max_length=2000)] = None,
                           max_results: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = 1000,
                           order_by: Annotated[list[str] | None, Query(max_length=20)] = None,
                           page_token: Annotated[str | None, Query(max_length=20)] = None) -> dict[str, Any]:
    body = from_query(ExperimentSearch, filter=filter, max_results=max_results, order_by=order_by or [],
                      page_token=page_token)
    return _search_experiments(engine, body)
