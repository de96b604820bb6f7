"""JSON behind the dashboard: aggregated curves, final-metric tables, comparisons, single replicates
on demand, dataset images and class counts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.api.deps import EngineDep, SettingsDep
from app.metrics import CURVE_KEYS, KEY_CHARS, PRIMARY_KEY
from app.services import charts, dataset_views, parcoords, results, search_progress
from app.services.charts import parse_ids
from app.spec import StoredText

router = APIRouter(prefix="/api", tags=["charts"])
KeysQuery = Query(list(CURVE_KEYS), description=f"metric keys, e.g. {PRIMARY_KEY}")
JSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}}}}


@router.get("/sweeps/{sweep_id}/aggregates", response_class=Response, responses=JSON)
def read_sweep_aggregates(sweep_id: int, engine: EngineDep, keys: list[StoredText] = KeysQuery,
                          configs: str | None = Query(None, description="only these configs, e.g. 3,7")
                          ) -> Response:
    """Per config and epoch: mean, std, min, max and n over replicates (columnar), and the cursor."""
    ids = parse_ids(configs, most=10_000) if configs else None
    return Response(charts.aggregate_json(engine, keys, sweep_id=sweep_id, config_ids=ids),
                    media_type="application/json")


MostRuns = Query(charts.RUNS_SHOWN, ge=1, le=charts.MOST_RUNS_SHOWN,
                 description="at most this many runs (the first by id); the answer says how many there are")


@router.get("/sweeps/{sweep_id}/series")
def read_sweep_series(sweep_id: int, engine: EngineDep, keys: list[StoredText] = KeysQuery,
                      max_runs: int = MostRuns) -> dict[str, Any]:
    """Every run's series for KEYS (columnar), at most MAX_RUNS of them (`runs_total`, `truncated`
    say what was left out), and the cursor to stream from."""
    return charts.sweep_run_series(engine, sweep_id, keys, max_runs)


@router.get("/sweeps/{sweep_id}/table", response_class=Response, responses=JSON)
def read_sweep_table(sweep_id: int, engine: EngineDep) -> Response:
    """Per config: replicates done, final and best accuracy with 95% CI, epochs to 99%, wall time;
    and how to draw each swept setting on an axis."""
    return Response(results.final_table_json(engine, sweep_id), media_type="application/json")


@router.get("/sweeps/{sweep_id}/parcoords")
def read_sweep_parcoords(sweep_id: int, engine: EngineDep,
                         metric: StoredText = Query(PRIMARY_KEY, min_length=1, max_length=KEY_CHARS,
                                                    description="the metric key")) -> dict[str, Any]:
    """Parallel coordinates of the configs with a succeeded run: one axis per varying setting, then
    the mean final METRIC (also the colour), Plotly-ready."""
    return parcoords.parcoords(engine, sweep_id, metric)


@router.get("/sweeps/{sweep_id}/search-progress")
def read_search_progress(sweep_id: int, engine: EngineDep,
                         metric: StoredText | None = Query(None, min_length=1, max_length=KEY_CHARS,
                                                           description="the metric key; default the race's, "
                                                                       "the pruner's, then the primary metric")
                         ) -> dict[str, Any]:
    """Per config in the order it was made: its mean final METRIC and the best mean so far (columnar)."""
    return search_progress.search_progress(engine, sweep_id, metric)


@router.get("/configs/aggregates")
def read_config_aggregates(engine: EngineDep, ids: str = Query(..., examples=["3,7"]),
                           keys: list[StoredText] = KeysQuery) -> dict[str, Any]:
    """The aggregated curves of configs from any sweeps."""
    return charts.aggregate_series(engine, keys, config_ids=parse_ids(ids))


@router.get("/configs/{config_id}/series")
def read_config_replicates(config_id: int, engine: EngineDep, keys: list[StoredText] = KeysQuery,
                           max_runs: int = MostRuns) -> dict[str, Any]:
    """Every replicate's own curves for one config (loaded when a user asks for single replicates),
    at most MAX_RUNS of them."""
    charts.config_infos(engine, config_ids=[config_id])
    return charts.run_series(engine, keys, config_ids=[config_id], max_runs=max_runs)


@router.get("/compare")
def compare_configs(engine: EngineDep, configs: str = Query(..., examples=["3,7"])) -> dict[str, Any]:
    """Final-metric rows of the configs and Welch's test of each against the first (primary metric)."""
    return results.compare_configs(engine, parse_ids(configs))


@router.get("/datasets/{name}")
def read_dataset(name: str, settings: SettingsDep) -> dict[str, Any]:
    """Class names and per-class counts of the training and test sets."""
    return dataset_views.dataset_summary(name, settings.data_dir)


@router.get("/datasets/{name}/images")
def read_dataset_images(name: str, settings: SettingsDep, split: Literal["train", "test"] = "train",
                        start: int = Query(0, ge=0), count: int = Query(20, ge=1, le=dataset_views.MAX_IMAGES)
                        ) -> dict[str, Any]:
    """Raw pixels (0-255, one flat row per image) and labels of images START..START+COUNT."""
    return dataset_views.dataset_images(name, settings.data_dir, split, start, count)
