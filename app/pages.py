"""HTML pages (Jinja2, autoescaped). Pages get their data from services; charts fetch JSON."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.api.deps import EngineDep
from app.services import runs as run_service
from app.services import sweeps as sweep_service

router = APIRouter(include_in_schema=False)
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _render(request: Request, name: str, **context: object) -> HTMLResponse:
    settings = request.app.state.settings
    context["token_required"] = settings.api_token is not None
    return request.app.state.templates.TemplateResponse(request, name, context)


@router.get("/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """Plotly.js from the installed `plotly` package: no CDN."""
    return FileResponse(PLOTLY_JS, media_type="application/javascript",
                        headers={"cache-control": "public, max-age=86400"})


@router.get("/", response_class=HTMLResponse)
def index_page(request: Request, engine: EngineDep) -> HTMLResponse:
    return _render(request, "index.html", sweeps=sweep_service.list_sweeps(engine))


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    sweep = sweep_service.read_sweep(engine, sweep_id)
    return _render(request, "sweep.html", sweep=sweep, configs=sweep_service.list_configs(engine, sweep_id))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: int, request: Request, engine: EngineDep) -> HTMLResponse:
    run = run_service.read_run(engine, run_id)
    return _render(request, "run.html", run=run, artifacts=run_service.list_artifacts(engine, run_id))
