"""HTML pages (Jinja2, autoescaped). Pages get their data from services; charts fetch JSON."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import plotly
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2.utils import htmlsafe_json_dumps

from app import metrics, statuses
from app.api.deps import EngineDep
from app.config_names import axis_groups, config_name
from app.datasets import DatasetUnavailable, available, class_names, describe
from app.models import RunStatus
from app.services import charts, dataset_views, metric_keys, questions, results, studies
from app.services import runs as run_service
from app.services import sweeps as sweep_service
from app.services import workers as worker_service
from app.services.charts import parse_ids
from app.spec import (
    GRID_PATHS,
    LAYER_KINDS,
    Activation,
    LayerSpec,
    Loss,
    OptimizerName,
    OutputActivation,
    SweepSpec,
)

router = APIRouter(include_in_schema=False)
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
AUTO_REPLICATES = 120  # up to this many runs a sweep page loads every replicate's curve at once
RUN_ROWS = 200  # a bigger sweep's runs table is loaded when opened


def vocabulary(keys: Sequence[str] = ()) -> dict[str, Any]:
    """What every page reads instead of spelling metric keys and statuses: the metric catalogue
    (with an entry for each of KEYS, the keys this page's runs report), the primary and final
    metrics, and the status catalogue in progress-bar order."""
    return {"metrics": metrics.catalogue_json(keys), "primary": metrics.PRIMARY_KEY,
            "finals": list(metrics.FINAL_KEYS), "statuses": statuses.catalogue_json()}


def url_path_part(value: object) -> str:
    """VALUE (a study's or a dataset's name) as the rest of a URL path: every reserved character
    escaped; a "/" stays readable (a study "course/week1" is /studies/course/week1), unless a part
    between slashes is "." or "..", which a browser would resolve away (Jinja's `urlencode` linked
    a study "a/../b" to /studies/b): then every "/" is escaped too. The templates' `path_part`."""
    text = str(value)
    dots = any(part in (".", "..") for part in text.split("/"))
    return quote(text, safe="" if dots else "/")


def _render(request: Request, name: str, keys: Sequence[str] = (), **context: object) -> HTMLResponse:
    settings = request.app.state.settings
    context["token_required"] = settings.api_token is not None
    context["vocabulary"] = vocabulary(keys)
    context["primary"] = metrics.describe(metrics.PRIMARY_KEY)
    context["can_cancel"], context["can_retry"] = statuses.can_cancel, statuses.can_retry
    context["status_label"] = statuses.label
    page: HTMLResponse = request.app.state.templates.TemplateResponse(request, name, context)
    return page


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
                   status=status.value if status else "",
                   workers=worker_service.live_workers(engine, request.app.state.settings.lease_seconds))


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep_page(request: Request, engine: EngineDep, copy: int | None = Query(None, alias="from")) -> HTMLResponse:
    """The form; `?from=ID` starts from an existing sweep's spec."""
    start: dict[str, Any] = {"name": "my sweep", "dataset": "mnist", "epochs": 10, "replicates": 3,
                             "model": {"hidden": [32]}, "grid": {}}
    if copy is not None:
        start = {**sweep_service.read_sweep(engine, copy).spec}
        start["name"] = f"{start.get('name', 'sweep')} (copy)"
    choices = {"dataset": available(request.app.state.settings.data_dir), "activation": get_args(Activation),
               "output_activation": get_args(OutputActivation), "loss": get_args(Loss),
               "optimizer": get_args(OptimizerName), "grid_paths": sorted(GRID_PATHS), "layer_kinds": LAYER_KINDS}
    # Serialised here, not with `tojson`, which sorts keys: the order of grid axes orders the configs.
    form = htmlsafe_json_dumps({"start": start, "defaults": SweepSpec(name="x").model_dump(mode="json")},
                               dumps=json.dumps)
    return _render(request, "new_sweep.html", choices=choices, form_json=form, layer_form=_layer_form())


def _layer_form() -> dict[str, list[dict[str, Any]]]:
    """Each layer kind's fields for the form's layer editor, from the spec's own models: name, default
    (None: required), and the choices of a Literal or the step of a number."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in LAYER_KINDS:
        model = get_args(LayerSpec.model_fields[kind].annotation)[0]  # the kind's settings (X | None)
        fields = []
        for name, info in model.model_fields.items():
            entry: dict[str, Any] = {"name": name, "default": None if info.is_required() else info.default}
            if choices := get_args(info.annotation):
                entry["choices"] = list(choices)
            else:
                entry["step"] = "1" if info.annotation is int else "any"
            fields.append(entry)
        out[kind] = fields
    return out


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    sweep = sweep_service.read_sweep(engine, sweep_id)
    runs = run_service.list_runs(engine, sweep_id) if sweep.runs <= RUN_ROWS else None
    keys = metric_keys.sweep_keys(engine, sweep_id)
    configs = [{"id": c["id"], "name": config_name(sweep.name, c["label"], within_sweep=True),
                "groups": axis_groups(c["params"])} for c in charts.sweep_configs(engine, sweep_id)]
    data = {"id": sweep.id, "runs": sweep.runs, "auto_replicates": sweep.runs <= AUTO_REPLICATES,
            "runs_rendered": runs is not None, "configs": configs, "keys": metrics.curve_keys(keys)}
    program = sweep.spec.get("program")
    offered_by = worker_service.offering(engine, program, request.app.state.settings.lease_seconds) if program else []
    return _render(request, "sweep.html", keys, sweep=sweep, runs=runs, data=data, program=program,
                   offered_by=offered_by)


def _class_names(dataset: str, data_dir: Path) -> list[str]:
    """The dataset's class names; ten labels when the server cannot read it (a download a worker made)."""
    try:
        return class_names(dataset, describe(dataset, data_dir).classes)
    except DatasetUnavailable:
        return class_names(dataset, 10)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    run = run_service.read_run(engine, run_id)
    sweep = sweep_service.read_sweep(engine, run.sweep_id)
    dataset = run.config.get("dataset", sweep.dataset)
    keys = metric_keys.run_keys(engine, run_id)
    artifacts = run_service.list_artifacts(engine, run_id)
    data = {"id": run.id, "sweep_id": run.sweep_id, "dataset": dataset, "status": run.status,
            "class_names": _class_names(dataset, request.app.state.settings.data_dir), "epochs": run.epochs,
            "artifacts": [a.name for a in artifacts]}
    # The config as text for its <pre>, autoescaped there: `tojson` writes < > & ' and non-ASCII as
    # \u escapes (safe inside a <script>), which a reader of the page would see as they are.
    config_text = json.dumps(run.config, indent=2, sort_keys=True, ensure_ascii=False)
    return _render(request, "run.html", keys, run=run, sweep=sweep, artifacts=artifacts, data=data,
                   config_text=config_text, final=statuses.is_final(run.status))


@router.get("/studies/{study:path}", response_class=HTMLResponse)
def study_page(study: str, request: Request, engine: EngineDep) -> HTMLResponse:
    """Every sweep of a study together and its declared questions answered (app.services.questions)."""
    overview = questions.study_overview(engine, study)
    keys = [q["metric"] for q in overview["questions"]]
    return _render(request, "study.html", keys, study=overview, data=overview)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, engine: EngineDep, configs: str = "") -> HTMLResponse:
    """Overlay configs from any sweeps and test their difference; `?configs=3,7`."""
    chosen = parse_ids(configs) if configs.strip() else []
    # unknown ids answer 404 here, not in the charts
    infos = charts.config_infos(engine, config_ids=chosen) if chosen else []
    keys = metric_keys.config_keys(engine, chosen)
    data = {"configs": chosen, "keys": metrics.curve_keys(keys),
            "names": {str(c["id"]): config_name(c["sweep_name"], c["label"]) for c in infos}}
    return _render(request, "compare.html", keys, chosen=chosen, picker=charts.recent_configs(engine), data=data)


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset_page(name: str, request: Request) -> HTMLResponse:
    summary = dataset_views.dataset_summary(name, request.app.state.settings.data_dir)
    return _render(request, "dataset.html", summary=summary)
