"""Reports to hand in: a sweep's or a study's self-contained HTML report, the same as PDF, and a
sweep's config table as LaTeX (booktabs). Each is a download (Content-Disposition: attachment;
`?inline=true` shows it in the browser instead).

Reports are made in the threadpool, at most REPORT_THREADS at a time (each is some megabytes of
text: Plotly.js is inlined); PDFs one at a time (app.services.report_pdf)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import State

from app.api.deps import EngineDep, SettingsDep
from app.services import latex, report, report_pdf
from app.services.sweeps import get_sweep_row

router = APIRouter(prefix="/api", tags=["reports"])
REPORT_THREADS = 2
ENVELOPE = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
HTML_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {}}}}
PDF_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/pdf": {}}},
    501: {"description": "the server cannot print PDFs: Playwright or Chromium is missing (the message says which)",
          "content": ENVELOPE},
    503: {"description": "another PDF is being rendered, or the database is busy: retry in a few seconds",
          "content": ENVELOPE},
    504: {"description": "the PDF took too long to render", "content": ENVELOPE},
}
TEX_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"text/x-tex": {}}}}
InlineQuery = Query(False, description="show it in the browser instead of downloading it")
DetectQuery = Query(None, gt=0, lt=1e9, description="a difference to size the seeds for, in the metric's own "
                                                    "unit (0.005 = half a point of accuracy)")


def _limiter(state: State) -> anyio.CapacityLimiter:
    if getattr(state, "report_limiter", None) is None:
        state.report_limiter = anyio.CapacityLimiter(REPORT_THREADS)
    limiter: anyio.CapacityLimiter = state.report_limiter
    return limiter


async def _in_thread(request: Request, work: Callable[[], Any]) -> Any:
    return await anyio.to_thread.run_sync(work, limiter=_limiter(request.app.state))


def _disposition(filename: str, inline: bool) -> dict[str, str]:
    return {"content-disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"'}


def _sweep_slug(engine: Any, sweep_id: int) -> str:
    sweep = get_sweep_row(engine, sweep_id)
    return f"sweep-{sweep_id}-{report.slug(sweep.name, 'report')}".removesuffix("-report")


@router.get("/sweeps/{sweep_id}/report.html", response_class=HTMLResponse, responses=HTML_ANSWER)
async def sweep_report_html(sweep_id: int, request: Request, engine: EngineDep, inline: bool = InlineQuery,
                            detect: float | None = DetectQuery) -> HTMLResponse:
    """One self-contained HTML file (Plotly.js inlined, nothing fetched, opens offline): the curves,
    the final metric against each swept setting, the config table with 95% CIs, the verdicts, the
    importance of each setting, the parallel coordinates and a methods paragraph."""
    from app.pages import PLOTLY_JS

    def make() -> tuple[str, str]:
        return _sweep_slug(engine, sweep_id), report.sweep_report_html(engine, sweep_id, PLOTLY_JS, detect)

    name, html = await _in_thread(request, make)
    return HTMLResponse(html, headers=_disposition(f"{name}-report.html", inline))


@router.get("/studies/{study:path}/report.html", response_class=HTMLResponse, responses=HTML_ANSWER)
async def study_report_html(study: str, request: Request, engine: EngineDep, inline: bool = InlineQuery,
                            detect: float | None = DetectQuery) -> HTMLResponse:
    """The study's report: its questions answered, then every sweep of the study as in a sweep's report."""
    from app.pages import PLOTLY_JS

    html = await _in_thread(request, lambda: report.study_report_html(engine, study, PLOTLY_JS, detect))
    name = f"study-{report.slug(study, 'report')}".removesuffix("-report")
    return HTMLResponse(html, headers=_disposition(f"{name}-report.html", inline))


@router.get("/sweeps/{sweep_id}/report.pdf", response_class=Response, responses=PDF_ANSWERS)
async def sweep_report_pdf(sweep_id: int, request: Request, engine: EngineDep, settings: SettingsDep,
                           inline: bool = InlineQuery, detect: float | None = DetectQuery) -> Response:
    """The sweep's report printed to A4 by headless Chromium (setting `report_chromium_path`)."""
    from app.pages import PLOTLY_JS

    chromium = settings.report_chromium_path
    name, version = await _in_thread(request, lambda: (_sweep_slug(engine, sweep_id),
                                                        report.sweep_version(engine, sweep_id)))
    pdf = await anyio.to_thread.run_sync(lambda: report_pdf.html_to_pdf(
        lambda: report.sweep_report_html(engine, sweep_id, PLOTLY_JS, detect), chromium,
        key=(str(engine.url), "sweep", sweep_id, detect), version=version))
    return Response(pdf, media_type="application/pdf", headers=_disposition(f"{name}-report.pdf", inline))


@router.get("/studies/{study:path}/report.pdf", response_class=Response, responses=PDF_ANSWERS)
async def study_report_pdf(study: str, request: Request, engine: EngineDep, settings: SettingsDep,
                           inline: bool = InlineQuery, detect: float | None = DetectQuery) -> Response:
    """The study's report printed to A4 by headless Chromium (setting `report_chromium_path`)."""
    from app.pages import PLOTLY_JS

    chromium = settings.report_chromium_path
    version = await _in_thread(request, lambda: report.study_version(engine, study))  # 404 before any browser
    pdf = await anyio.to_thread.run_sync(lambda: report_pdf.html_to_pdf(
        lambda: report.study_report_html(engine, study, PLOTLY_JS, detect), chromium,
        key=(str(engine.url), "study", study, detect), version=version))
    name = f"study-{report.slug(study, 'report')}".removesuffix("-report")
    return Response(pdf, media_type="application/pdf", headers=_disposition(f"{name}-report.pdf", inline))


@router.get("/sweeps/{sweep_id}/table.tex", response_class=Response, responses=TEX_ANSWER)
async def sweep_table_tex(sweep_id: int, request: Request, engine: EngineDep, inline: bool = InlineQuery) -> Response:
    """The config table as LaTeX: booktabs rules, one row per config, mean ± 95% CI half-width of
    each final metric and n; every label escaped. Needs \\usepackage{booktabs}."""
    def make() -> tuple[str, str]:
        return _sweep_slug(engine, sweep_id), latex.sweep_table_tex(engine, sweep_id, report.sweeplab_version())

    name, tex = await _in_thread(request, make)
    return Response(tex, media_type="text/x-tex; charset=utf-8", headers=_disposition(f"{name}-table.tex", inline))
