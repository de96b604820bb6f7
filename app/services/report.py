"""A report to hand in: one self-contained HTML file per sweep or study (templates/report.html)
with Plotly.js inlined, its charts' data as JSON in the page, the config table with 95% CIs, the
verdicts, the importance of each setting, the parallel coordinates and a generated methods
paragraph. Nothing in it is fetched: it opens from disk, offline, and stays interactive.

Everything from users (sweep, study and config names, setting values, questions) reaches the page
through Jinja's autoescaping or inside the figures' JSON (`<`, `>`, `&` escaped as \\u003c...,
and chart text entity-escaped for Plotly: app.services.report_figures.chart_text).

The statistics come from their own services; a section whose service is missing or refuses the
sweep (too few replicates, say) is shown as not available, with the reason, rather than failing
the whole report. This module renders the page and names its versions; the sections' data is
app.services.report_sections', their charts app.services.report_figures', the methods paragraph
app.services.report_methods' and the numbers' formats app.services.report_format's."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import unicodedata
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup
from sqlalchemy import Engine

from app.config import PROJECT_ROOT
from app.services.questions import study_questions
from app.services.report_format import DASH, when
from app.services.report_sections import Figures, question_sections, section, sweep_section
from app.services.snapshots import Scope, snapshot
from app.services.studies import study_sweeps


def sweeplab_version() -> str:
    try:
        return importlib.metadata.version("sweeplab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def slug(text: str, fallback: str) -> str:
    """TEXT as a file name part: ASCII letters, digits and dashes, at most 60 characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    out = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60].strip("-")
    return out or fallback


# ---- versions: what a report shows changes only with these ---------------------------------------

def sweep_version(engine: Engine, sweep_id: int) -> tuple[Any, ...]:
    """The sweep's commit sequence and its runs' statuses: a new epoch, provenance or status changes it."""
    snap = snapshot(engine, Scope(sweep_id))
    return (tuple(sorted(snap.seqs.items())), snap.status_digest)


def study_version(engine: Engine, study: str) -> tuple[Any, ...]:
    return tuple((sw.id, *sweep_version(engine, sw.id)) for sw in study_sweeps(engine, study))


# ---- rendering -----------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """VALUE with every float that is not a real number as None: JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(PROJECT_ROOT / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["seconds"] = lambda s: DASH if s is None else f"{s:.1f} s"
    return env


@lru_cache(maxsize=2)
def _plotly_source(path: str) -> str:
    source = Path(path).read_text(encoding="utf-8")
    if "</script" in source.lower():  # it could not be inlined as it is
        raise RuntimeError(f"{path} contains </script")
    return source


def _render(context: dict[str, Any], figures: Figures, plotly_js: Path) -> str:
    data = htmlsafe_json_dumps(_clean(figures.items), dumps=lambda v, **kw: json.dumps(v, allow_nan=False, **kw))
    html: str = _environment().get_template("report.html").render(
        **context, figures_json=data, chart_count=len(figures.items),
        plotly_js=Markup(_plotly_source(str(plotly_js))))
    return html


def sweep_report_html(engine: Engine, sweep_id: int, plotly_js: Path, detect: float | None = None) -> str:
    """The sweep's report as one HTML document (404 for an unknown sweep)."""
    figures = Figures()
    generated, version = when(datetime.now(UTC)), sweeplab_version()
    one = sweep_section(engine, sweep_id, figures, generated, version, detect)
    return _render({"title": f"{one['sweep'].name} — sweep report", "heading": one["sweep"].name,
                    "subtitle": "Sweep report", "study": None, "questions": None, "questions_missing": None,
                    "sections": [one], "generated": generated, "version": version}, figures, plotly_js)


def study_report_html(engine: Engine, study: str, plotly_js: Path, detect: float | None = None) -> str:
    """The study's report: its questions with their answers, then every sweep of the study in turn."""
    sweeps = study_sweeps(engine, study)
    figures = Figures()
    generated, version = when(datetime.now(UTC)), sweeplab_version()
    questions, questions_missing = section(study_questions, engine, study)
    answers = question_sections(questions, figures) if questions is not None else None  # first: figures in page order
    sections = [sweep_section(engine, sw.id, figures, generated, version, detect) for sw in sweeps]
    return _render({"title": f"{study} — study report", "heading": study,
                    "subtitle": f"Study report: {len(sweeps)} sweep{'s' * (len(sweeps) != 1)}", "study": study,
                    "questions": answers,
                    "questions_missing": questions_missing, "sections": sections, "generated": generated,
                    "version": version}, figures, plotly_js)
