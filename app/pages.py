"""HTML pages (Jinja2, autoescaped). Pages get their data from services; charts fetch JSON."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import plotly
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2.utils import htmlsafe_json_dumps

from app.api.deps import EngineDep
from app.datasets import CLASS_NAMES
from app.models import RunStatus
from app.services import charts, dataset_views, results, studies
from app.services import runs as run_service
from app.services import sweeps as sweep_service
from app.services.charts import parse_ids
from app.spec import (
    GRID_PATHS,
    Activation,
    Dataset,
    Loss,
    OptimizerName,
    OutputActivation,
    SweepSpec,
)

router = APIRouter(include_in_schema=False)
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
AUTO_REPLICATES = 120  # up to this many runs a sweep page loads every replicate's curve at once
RUN_ROWS = 200  # a bigger sweep's runs table is loaded when opened


def _render(request: Request, name: str, **context: object) -> HTMLResponse:
    settings = request.app.state.settings
    context["token_required"] = settings.api_token is not None
    return request.app.state.templates.TemplateResponse(request, name, context)


@lru_cache(maxsize=1)
def _plotly_gzip() -> bytes:
    return gzip.compress(PLOTLY_JS.read_bytes(), compresslevel=6)


@router.get("/vendor/plotly.min.js", response_model=None)
def plotly_js(request: Request) -> Response:
    """Plotly.js from the installed `plotly` package (no CDN), gzipped for browsers that take it."""
    headers = {"cache-control": "public, max-age=86400", "vary": "accept-encoding"}
    if "gzip" not in request.headers.get("accept-encoding", ""):
        return FileResponse(PLOTLY_JS, media_type="application/javascript", headers=headers)
    return Response(_plotly_gzip(), media_type="application/javascript",
                    headers={**headers, "content-encoding": "gzip"})


@router.get("/", response_class=HTMLResponse)
def index_page(request: Request, engine: EngineDep, study: str | None = None,
               status: RunStatus | None = None) -> HTMLResponse:
    sweeps = sweep_service.list_sweeps(engine, study or None, status.value if status else None)
    return _render(request, "index.html", sweeps=sweeps, best=results.best_configs(engine, [s.id for s in sweeps]),
                   studies=studies.list_studies(engine), study=study or "",
                   status=status.value if status else "", statuses=[s.value for s in RunStatus])


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep_page(request: Request, engine: EngineDep, copy: int | None = Query(None, alias="from")) -> HTMLResponse:
    """The form; `?from=ID` starts from an existing sweep's spec."""
    start: dict[str, Any] = {"name": "my sweep", "dataset": "mnist", "epochs": 10, "replicates": 3,
                             "model": {"hidden": [32]}, "grid": {}}
    if copy is not None:
        start = {**sweep_service.read_sweep(engine, copy).spec}
        start["name"] = f"{start.get('name', 'sweep')} (copy)"
    choices = {"dataset": get_args(Dataset), "activation": get_args(Activation),
               "output_activation": get_args(OutputActivation), "loss": get_args(Loss),
               "optimizer": get_args(OptimizerName), "grid_paths": sorted(GRID_PATHS)}
    # Serialised here, not with `tojson`, which sorts keys: the order of grid axes orders the configs.
    form = htmlsafe_json_dumps({"start": start, "defaults": SweepSpec(name="x").model_dump(mode="json")},
                               dumps=json.dumps)
    return _render(request, "new_sweep.html", choices=choices, form_json=form)


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    sweep = sweep_service.read_sweep(engine, sweep_id)
    runs = run_service.list_runs(engine, sweep_id) if sweep.runs <= RUN_ROWS else None
    config_ids = [c["id"] for c in charts.sweep_configs(engine, sweep_id)]
    return _render(request, "sweep.html", sweep=sweep, runs=runs, config_ids=config_ids,
                   auto_replicates=sweep.runs <= AUTO_REPLICATES)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    run = run_service.read_run(engine, run_id)
    sweep = sweep_service.read_sweep(engine, run.sweep_id)
    dataset = run.config.get("dataset", sweep.dataset)
    return _render(request, "run.html", run=run, sweep=sweep, dataset=dataset,
                   class_names=CLASS_NAMES.get(dataset, [str(i) for i in range(10)]),
                   artifacts=run_service.list_artifacts(engine, run_id))


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, engine: EngineDep, configs: str = "") -> HTMLResponse:
    """Overlay configs from any sweeps and test their difference; `?configs=3,7`."""
    chosen = parse_ids(configs) if configs.strip() else []
    if chosen:
        charts.config_infos(engine, config_ids=chosen)  # unknown ids answer 404 here, not in the charts
    return _render(request, "compare.html", chosen=chosen, picker=charts.recent_configs(engine))


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset_page(name: str, request: Request) -> HTMLResponse:
    summary = dataset_views.dataset_summary(name, request.app.state.settings.data_dir)
    return _render(request, "dataset.html", summary=summary)
