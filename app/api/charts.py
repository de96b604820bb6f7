"""JSON behind the dashboard: aggregated curves, final-metric tables, comparisons, single replicates
on demand, dataset images and class counts, and validation of a spec without submitting it."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import ContentTyped, EngineDep, SettingsDep
from app.api.sweeps import SPEC_BODY, _spec_data
from app.config import Settings
from app.datasets import check_available
from app.errors import InvalidSpec, SweeplabError
from app.services import charts
from app.services import sweeps as sweep_service

router = APIRouter(prefix="/api", tags=["charts"])
KeysQuery = Query(list(charts.CURVE_KEYS), description="metric keys, e.g. val_accuracy")
MAX_COMPARED = 20


def parse_ids(text: str, most: int = MAX_COMPARED) -> list[int]:
    """'3,7,12' -> [3, 7, 12] (order kept, repeats dropped)."""
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SweeplabError(f"configs: expected comma-separated config ids, got {text[:100]!r}") from None
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise SweeplabError("configs: give at least one config id")
    if len(ids) > most:
        raise SweeplabError(f"configs: at most {most} configs at once")
    return ids


JSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}}}}


@router.get("/sweeps/{sweep_id}/aggregates", response_class=Response, responses=JSON)
def read_sweep_aggregates(sweep_id: int, engine: EngineDep, keys: list[str] = KeysQuery,
                          configs: str | None = Query(None, description="only these configs, e.g. 3,7")
                          ) -> Response:
    """Per config and epoch: mean, std, min, max and n over replicates (columnar), and the cursor."""
    ids = parse_ids(configs, most=10_000) if configs else None
    return Response(charts.aggregate_json(engine, keys, sweep_id=sweep_id, config_ids=ids),
                    media_type="application/json")


@router.get("/sweeps/{sweep_id}/table", response_class=Response, responses=JSON)
def read_sweep_table(sweep_id: int, engine: EngineDep) -> Response:
    """Per config: replicates done, final and best accuracy with 95% CI, epochs to 99%, wall time;
    and how to draw each swept setting on an axis."""
    return Response(charts.final_table_json(engine, sweep_id), media_type="application/json")


@router.get("/configs/aggregates")
def read_config_aggregates(engine: EngineDep, ids: str = Query(..., examples=["3,7"]),
                           keys: list[str] = KeysQuery) -> dict[str, Any]:
    """The aggregated curves of configs from any sweeps."""
    return charts.aggregate_series(engine, keys, config_ids=parse_ids(ids))


@router.get("/configs/{config_id}/series")
def read_config_replicates(config_id: int, engine: EngineDep, keys: list[str] = KeysQuery) -> dict[str, Any]:
    """Every replicate's own curves for one config (loaded when a user asks for single replicates)."""
    charts.config_infos(engine, config_ids=[config_id])
    return charts.run_series(engine, keys, config_ids=[config_id])


@router.get("/compare")
def compare_configs(engine: EngineDep, configs: str = Query(..., examples=["3,7"])) -> dict[str, Any]:
    """Final-metric rows of the configs and Welch's test of each against the first (val_accuracy)."""
    return charts.compare_configs(engine, parse_ids(configs))


@router.post("/sweeps/validate", dependencies=ContentTyped, openapi_extra=SPEC_BODY,
             responses={422: {"description": "invalid spec, with the failing fields"}})
async def validate_sweep(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Check a spec (JSON, or YAML with content-type application/yaml) without submitting it:
    the number of configs and runs it expands to, and the spec with defaults filled in."""
    data = await _spec_data(request)
    # Off the event loop: expanding a big grid and probing a dataset (maybe over the network) block.
    return await run_in_threadpool(_validate, settings, data)


def _validate(settings: Settings, data: Any) -> dict[str, Any]:
    spec = sweep_service.parse_spec(data)
    for dataset in {spec.dataset, *spec.grid.get("dataset", [])}:
        reason = check_available(str(dataset), settings.data_dir)
        if reason:
            raise InvalidSpec(f"dataset: {reason}", [{"loc": "dataset", "msg": reason}])
    n_configs = len(spec.combinations())
    if spec.run_count() > settings.max_runs_per_sweep:
        msg = f"the sweep expands to {spec.run_count()} runs; this server accepts at most {settings.max_runs_per_sweep}"
        raise InvalidSpec(msg, [{"loc": "grid", "msg": msg}])
    data = spec.model_dump(mode="json", exclude_none=True)
    if "learning_rate" not in spec.optimizer.model_fields_set:
        data["optimizer"].pop("learning_rate", None)  # each optimizer keeps its own default
    return {"valid": True, "configs": n_configs, "replicates": len(spec.seed_list()), "runs": spec.run_count(),
            "spec": data}


@router.get("/datasets/{name}")
def read_dataset(name: str, settings: SettingsDep) -> dict[str, Any]:
    """Class names and per-class counts of the training and test sets."""
    return charts.dataset_summary(name, settings.data_dir)


@router.get("/datasets/{name}/images")
def read_dataset_images(name: str, settings: SettingsDep, split: Literal["train", "test"] = "train",
                        start: int = Query(0, ge=0), count: int = Query(20, ge=1, le=charts.MAX_IMAGES)
                        ) -> dict[str, Any]:
    """Raw pixels (0-255, one flat row per image) and labels of images START..START+COUNT."""
    return charts.dataset_images(name, settings.data_dir, split, start, count)
