"""A report to hand in: one self-contained HTML file per sweep or study (templates/report.html)
with Plotly.js inlined, its charts' data as JSON in the page, the config table with 95% CIs, the
verdicts, the importance of each setting, the parallel coordinates and a generated methods
paragraph. Nothing in it is fetched: it opens from disk, offline, and stays interactive.

Everything from users (sweep, study and config names, setting values, questions) reaches the page
through Jinja's autoescaping or inside the figures' JSON (`<`, `>`, `&` escaped as \\u003c...,
and chart text entity-escaped for Plotly: app.services.report_figures.chart_text).

The statistics come from their own services; a section whose service is missing or refuses the
sweep (too few replicates, say) is shown as not available, with the reason, rather than failing
the whole report."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup
from sqlalchemy import Engine

from app import metrics, statuses
from app.config import PROJECT_ROOT
from app.config_names import axis_groups, config_name
from app.errors import SweeplabError
from app.metrics import PRIMARY_KEY
from app.schemas import SweepPublic
from app.services import charts, metric_keys, results, stats
from app.services import report_figures as figs
from app.services.importance import sweep_importance
from app.services.latex import final_metric_keys, scaled, varying_axes
from app.services.parcoords import parcoords
from app.services.provenance import sweep_provenance
from app.services.questions import study_questions
from app.services.snapshots import Scope, snapshot
from app.services.studies import study_sweeps
from app.services.sweeps import read_sweep
from app.services.verdicts import sweep_verdicts

MAX_CURVE_CONFIGS = 12  # configs drawn in the curve charts (the best by mean final primary metric)
NOT_AVAILABLE = "not available"
DASH = "\N{EN DASH}"  # a missing value; a range of seeds
# The provenance fields the methods paragraph and the software table name, in this order.
SOFTWARE = (("sweeplab", "sweeplab"), ("python", "Python"), ("tensorflow", "TensorFlow"), ("keras", "Keras"),
            ("numpy", "NumPy"))
MACHINE = (("host", "host"), ("cpu", "CPU"), ("gpu", "GPU"), ("trainer", "trainer"), ("packed", "packed"),
           ("pack_size", "pack size"))


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


# ---- the statistics' sections --------------------------------------------------------------------

def _section(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """(CALL's answer, None), or (None, why the section is not available) when it refuses."""
    try:
        return call(*args, **kwargs), None
    except SweeplabError as exc:
        return None, f"{NOT_AVAILABLE}: {exc.message}"


# ---- numbers as the report writes them ---------------------------------------------------------

def fmt_value(key: str, value: float | None) -> str:
    """A value of KEY: percent with two decimals for accuracies, four decimals otherwise."""
    if value is None:
        return DASH
    return f"{scaled(key, value):.2f}" if metrics.describe(key).format == "percent" else f"{value:.4f}"


def unit(key: str) -> str:
    return "%" if metrics.describe(key).format == "percent" else ""


def points(key: str, value: float | None) -> str:
    """A difference of KEY in words: '0.9 points' for accuracies, '0.0123' otherwise."""
    if value is None:
        return DASH
    if metrics.describe(key).format == "percent":
        return f"{100 * value:.2f} points"
    return f"{value:.4g}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def seed_ranges(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0-3, 7' (with an en dash)."""
    xs = sorted(set(seeds))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}{DASH}{xs[j]}" if j > i + 1 else f"{xs[i]}, {xs[j]}")
        i = j + 1
    return ", ".join(parts)


def and_list(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _clean(value: Any) -> Any:
    """VALUE with every float that is not a real number as None: JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if dt is not None else DASH


# ---- one sweep -----------------------------------------------------------------------------------

class _Figures:
    """The report's charts in page order, each with an id of its own (never user text)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, figure: dict[str, Any] | None, caption: str) -> dict[str, Any] | None:
        if figure is None:
            return None
        entry = {"id": f"fig-{len(self.items) + 1}", "caption": caption, "data": figure["data"],
                 "layout": figure["layout"]}
        self.items.append(entry)
        return {"id": entry["id"], "caption": caption, "wide": bool(figure.get("wide"))}


def _table(sweep: SweepPublic, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = final_metric_keys()
    out = []
    for r in rows:
        counts = r["status_counts"]
        primary = r["final"][PRIMARY_KEY]
        cells = []
        for key in keys:
            f = r["final"][key]
            ci = "" if f["ci_low"] is None else f"[{fmt_value(key, f['ci_low'])}, {fmt_value(key, f['ci_high'])}]"
            half = "" if f["half_width"] is None else f" ± {fmt_value(key, f['half_width'])}"
            cells.append({"mean": fmt_value(key, f["mean"]) + half if f["mean"] is not None else DASH, "ci": ci})
        out.append({"id": r["id"], "name": config_name(sweep.name, r["label"], within_sweep=True),
                    "n": primary["n"], "seeds": seed_ranges(primary["seeds"]),
                    "runs": sum(counts.values()), "done": r["done"], "cells": cells,
                    "wall": r["wall_seconds"]["mean"]})
    return {"titles": [f"{metrics.describe(k).title} ({unit(k)})" if unit(k) else metrics.describe(k).title
                       for k in keys], "rows": out}


def _curve_configs(sweep: SweepPublic, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The configs the curve charts draw (all, or the best MAX_CURVE_CONFIGS) and a caption's note."""
    chosen = rows
    note = ""
    if len(rows) > MAX_CURVE_CONFIGS:
        lower = metrics.describe(PRIMARY_KEY).higher_is_better is False
        scored = [r for r in rows if r["final"][PRIMARY_KEY]["mean"] is not None]
        scored.sort(key=lambda r: r["final"][PRIMARY_KEY]["mean"], reverse=not lower)
        keep = {r["id"] for r in scored[:MAX_CURVE_CONFIGS]}
        chosen = [r for r in rows if r["id"] in keep]
        note = (f" The {len(chosen)} configs with the best mean final {metrics.describe(PRIMARY_KEY).title} "
                f"of {len(rows)} are drawn.")
    configs = [{"id": r["id"], "position": r["position"],
                "name": config_name(sweep.name, r["label"], within_sweep=True)} for r in chosen]
    return configs, note


def _power_sentence(key: str, power: dict[str, Any] | None) -> str | None:
    """The verdicts' power sentence (app.services.verdicts) with the test and the noise it assumes."""
    sentence = str((power or {}).get("sentence") or "").strip().rstrip(".")
    if not power or not sentence:
        return None
    sentence = sentence[:1].upper() + sentence[1:]
    if power.get("detectable_difference") is not None:
        alpha = "\N{GREEK SMALL LETTER ALPHA}"
        sentence += (f" (a two-sided two-sample t-test at {alpha} = {power.get('alpha', 0.05):g} with power "
                     f"{power.get('power', 0.8):g}, for the seed noise of this sweep: a pooled standard deviation of "
                     f"{points(key, power.get('pooled_sd'))} in the final {metrics.describe(key).title})")
    return sentence + "."


def _versions(prov: dict[str, list[Any]], fields: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{title} {and_list([str(v) for v in prov[key]])}" for key, title in fields if prov.get(key)]


def _provenance_rows(prov: dict[str, list[Any]]) -> list[tuple[str, str]]:
    named = dict((*SOFTWARE, *MACHINE, ("dataset", "dataset"), ("dataset_sha256", "dataset sha256"),
                  ("seed", "seeds")))
    rows = []
    for key, values in prov.items():
        if key in ("attempt",):
            continue
        text = seed_ranges([int(v) for v in values if isinstance(v, int)]) if key == "seed" else \
            and_list([("yes" if v else "no") if isinstance(v, bool) else str(v) for v in values])
        rows.append((named.get(key, key), text))
    order = list(named.values())
    return sorted(rows, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0]))


def _methods(sweep: SweepPublic, rows: list[dict[str, Any]], axes: list[dict[str, Any]],
             verdicts: dict[str, Any] | None, importance: dict[str, Any] | None,
             prov: dict[str, list[Any]], generated: str, version: str) -> list[str]:
    """The methods paragraph, as sentences a student can hand in."""
    key = PRIMARY_KEY
    title = metrics.describe(key).title
    ns = [r["final"][key]["n"] for r in rows]
    seed_sets = {tuple(sorted(r["final"][key]["seeds"])) for r in rows if r["final"][key]["n"]}
    counts: dict[str, int] = {}
    for r in rows:
        for status, n in r["status_counts"].items():
            counts[status] = counts.get(status, 0) + n
    out = []
    varied = f", varying {and_list([a['title'] for a in axes])}" if axes else ""
    design = (f"Sweep “{sweep.name}” (#{sweep.id}) trained {len(rows)} configuration{'s' * (len(rows) != 1)} on the "
              f"{sweep.dataset} dataset{varied}, each replicated over random seeds. ")
    if not ns or max(ns) == 0:
        design += "No run has succeeded yet, so there are no final values to report."
        out.append(design)
    else:
        n_text = f"n = {ns[0]}" if min(ns) == max(ns) else f"between {min(ns)} and {max(ns)}"
        design += f"Each configuration has {n_text} succeeded replicates"
        if len(seed_sets) == 1:
            design += f" (seeds {seed_ranges(next(iter(seed_sets)))})"
        else:
            design += " (the table lists each configuration's seeds)"
        left_out = [f"{n} {statuses.label(s)}" for s, n in counts.items() if n and s != results.SUCCEEDED]
        if left_out:
            design += f"; runs that did not succeed ({and_list(left_out)}) are left out"
        out.append(design + ".")
        out.append(f"A run's final value of a metric is its value at the last epoch it logged. The table gives the "
                   f"mean over replicates with the {stats.CONFIDENCE:.0%} confidence interval of the mean "
                   f"(t distribution, n \N{MINUS SIGN} 1 degrees of freedom).")
    if verdicts and verdicts.get("best") and verdicts.get("comparisons"):
        family = [c for c in verdicts["comparisons"] if c.get("p_holm") is not None]
        direction = "highest" if verdicts.get("higher_is_better", True) is not False else "lowest"
        tests = (f"Every configuration was compared with the best one (the {direction} mean final "
                 f"{metrics.describe(verdicts.get('best_by') or verdicts['metric']).title}, "
                 f"“{verdicts['best']['label']}”) by Welch's unequal-variances t-test, with the 95% confidence "
                 f"interval of the difference of means from the Welch{DASH}Satterthwaite degrees of freedom; the "
                 f"{len(family)} p-value{'s' * (len(family) != 1)} of this family "
                 f"{'were' if len(family) != 1 else 'was'} adjusted by Holm's step-down method, and a configuration "
                 f"counts as different from the best when its adjusted p is below 0.05 (configurations with fewer "
                 f"than 2 replicates are not tested)")
        if verdicts.get("dropped"):
            tests += f"; {verdicts['dropped']} final values that were not real numbers (NaN, infinite) were dropped"
        out.append(tests + ".")
    if verdicts:
        sentence = _power_sentence(verdicts["metric"], verdicts.get("power"))
        if sentence:
            out.append(sentence)
    if importance and importance.get("factors"):
        out.append(f"The share of the variance of the final {title} that each setting explains is η², its sum of "
                   f"squares over the total in a type II analysis of variance with the settings as categorical "
                   f"factors (two-way interactions where every cell has replicates) and the seeds as the error "
                   f"term, with 95% confidence intervals from a seeded bootstrap over replicates within configs.")
    software = _versions(prov, SOFTWARE)
    if software:
        sentence = f"Trained with {and_list(software)}"
        machine = _versions(prov, (("host", "on host"), ("cpu", "CPU"), ("gpu", "GPU")))
        if machine:
            sentence += f" ({'; '.join(machine)})"
        if prov.get("packed") == [True] and prov.get("pack_size"):
            sentence += f", packed {and_list([str(v) for v in prov['pack_size']])} runs per model"
        out.append(sentence + ".")
    if prov.get("dataset_sha256"):
        out.append(f"Dataset {and_list([str(v) for v in prov.get('dataset') or [sweep.dataset]])}, "
                   f"sha256 {and_list([str(v) for v in prov['dataset_sha256']])}.")
    if not software and not prov.get("dataset_sha256"):
        out.append("The runs recorded no provenance (software versions, dataset hash).")
    out.append(f"Report generated on {generated} by sweeplab {version}.")
    return out


def _capital(text: str) -> str:
    """TEXT as a sentence: a capital first letter, a full stop at the end."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _verdict_rows(verdicts: dict[str, Any]) -> list[dict[str, Any]]:
    key = verdicts["metric"]
    best = verdicts.get("best")
    out = []
    if best:  # the reference: its own CI is in the config table, this column holds differences' CIs
        out.append({"label": best["label"], "n": best["n"], "mean": fmt_value(key, best["mean"]), "difference": "",
                    "ci": "", "p": "", "p_holm": "", "verdict": "best"})
    for c in verdicts.get("comparisons") or []:
        ci = c.get("ci") or [None, None]
        diff = c.get("difference")
        out.append({"label": c["label"], "n": c["n"], "mean": fmt_value(key, c.get("mean")),
                    "difference": DASH if diff is None else f"{scaled(key, diff):+.2f}",
                    "ci": f"[{scaled(key, ci[0]):+.2f}, {scaled(key, ci[1]):+.2f}]" if ci[0] is not None else "",
                    "p": fmt_p(c.get("p")), "p_holm": fmt_p(c.get("p_holm")), "verdict": str(c.get("verdict"))})
    return out


def _sweep_section(engine: Engine, sweep_id: int, figures: _Figures, generated: str, version: str,
                   detect: float | None) -> dict[str, Any]:
    sweep = read_sweep(engine, sweep_id)
    table = results.final_table(engine, sweep_id)
    rows = table["configs"]
    axes = varying_axes(table["axes"], rows)
    keys = metrics.curve_keys(metric_keys.sweep_keys(engine, sweep_id))
    shown, note = _curve_configs(sweep, rows)
    series = charts.aggregate_series(engine, keys, sweep_id=sweep_id, config_ids=[c["id"] for c in shown])["series"] \
        if keys and shown else {}
    curves = [figs.curve_figure(k, shown, series) for k in keys]
    curve_figs = [f for f in (figures.add(fig, f"{metrics.describe(k).title} over epochs: the mean over each "
                                           f"config's replicates (line) ± 1 standard deviation (band).{note}")
                              for k, fig in zip(keys, curves, strict=True)) if f]
    sweep_figs = []
    if len(rows) > 1:
        for axis in axes:
            groups = {r["id"]: axis_groups(r["params"]).get(axis["path"], "") for r in rows}
            fig = figs.sweep_figure(PRIMARY_KEY, axis, rows, groups)
            title = f"Final {metrics.describe(PRIMARY_KEY).title} against {axis['title']}"
            if len(set(groups.values())) > figs.MAX_GROUP_LINES:
                caption = (f"{title}: each dot is a config's mean over its replicates (hover for its other "
                           f"settings); the line is the mean of those means at each value.")
            else:
                caption = (f"{title}: the mean over replicates with its 95% confidence interval, one line per "
                           f"combination of the other settings; dots are single replicates.")
            added = figures.add(fig, caption)
            if added:
                sweep_figs.append(added)
    single = len(rows) <= 1  # nothing to compare, nothing to attribute variance to
    verdicts_missing: str | None
    importance_missing: str | None
    par_missing: str | None
    if single:
        verdicts, importance, par = None, None, None
        verdicts_missing = importance_missing = par_missing = "not applicable: the sweep has one config"
    else:
        verdicts, verdicts_missing = _section(sweep_verdicts, engine, sweep_id, metric=PRIMARY_KEY, detect=detect)
        importance, importance_missing = _section(sweep_importance, engine, sweep_id, PRIMARY_KEY)
        par, par_missing = _section(parcoords, engine, sweep_id, PRIMARY_KEY)
    importance_fig = figures.add(figs.importance_figure(importance) if importance else None,
                                 "Share of the variance of the final metric explained by each setting (η², type II "
                                 "ANOVA) with 95% bootstrap confidence intervals; grey: the seeds (residual).")
    par_fig = figures.add(figs.parcoords_figure(par) if par else None,
                          "Each line is a config: its settings on the first axes, its mean final metric on the last "
                          "axis and as its colour. Drag along an axis to pick configs.")
    if par is not None and par_fig is None:
        par_missing = "nothing to draw: fewer than two configs with a final value, or no setting that varies"
    prov = sweep_provenance(engine, sweep_id)
    power = _power_sentence(PRIMARY_KEY, verdicts.get("power")) if verdicts else None
    summary = [_capital(t) for t in ((verdicts or {}).get("text"), power) if t]
    if importance and importance.get("text") and importance.get("factors"):
        summary.append(str(importance["text"]))  # it starts with a setting's name: as it is
    if single and rows and rows[0]["final"][PRIMARY_KEY]["n"]:
        f = rows[0]["final"][PRIMARY_KEY]
        spread = "" if f["half_width"] is None else f" ± {fmt_value(PRIMARY_KEY, f['half_width'])}"
        summary.append(f"Final {metrics.describe(PRIMARY_KEY).title}: {fmt_value(PRIMARY_KEY, f['mean'])}{spread}"
                       f"{unit(PRIMARY_KEY)} (mean ± 95% CI half-width over {f['n']} "
                       f"seed{'s' * (f['n'] != 1)}).")
    return {
        "anchor": f"sweep-{sweep.id}", "summary": summary, "single": single, "sweep": sweep,
        "created": _when(sweep.created_at),
        "description": sweep.spec.get("description") or "", "kind": sweep.spec.get("kind", ""),
        "table": _table(sweep, rows), "primary": metrics.describe(PRIMARY_KEY).title,
        "curves": curve_figs, "sweep_figures": sweep_figs, "grid": bool(axes) and len(rows) > 1,
        "verdicts": verdicts, "verdict_rows": _verdict_rows(verdicts) if verdicts else [],
        "verdict_unit": "points" if unit(PRIMARY_KEY) else "", "verdicts_missing": verdicts_missing,
        "power": power,
        "importance": importance, "importance_figure": importance_fig, "importance_missing": importance_missing,
        "parcoords": par_fig, "parcoords_missing": par_missing,
        "provenance": _provenance_rows(prov),
        "methods": _methods(sweep, rows, axes, verdicts, importance, prov, generated, version),
    }


# ---- versions: what a report shows changes only with these ---------------------------------------

def sweep_version(engine: Engine, sweep_id: int) -> tuple[Any, ...]:
    """The sweep's commit sequence and its runs' statuses: a new epoch, provenance or status changes it."""
    snap = snapshot(engine, Scope(sweep_id))
    return (tuple(sorted(snap.seqs.items())), snap.status_digest)


def study_version(engine: Engine, study: str) -> tuple[Any, ...]:
    return tuple((sw.id, *sweep_version(engine, sw.id)) for sw in study_sweeps(engine, study))


# ---- rendering -----------------------------------------------------------------------------------

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


def _render(context: dict[str, Any], figures: _Figures, plotly_js: Path) -> str:
    data = htmlsafe_json_dumps(_clean(figures.items), dumps=lambda v, **kw: json.dumps(v, allow_nan=False, **kw))
    html: str = _environment().get_template("report.html").render(
        **context, figures_json=data, chart_count=len(figures.items),
        plotly_js=Markup(_plotly_source(str(plotly_js))))
    return html


def sweep_report_html(engine: Engine, sweep_id: int, plotly_js: Path, detect: float | None = None) -> str:
    """The sweep's report as one HTML document (404 for an unknown sweep)."""
    figures = _Figures()
    generated, version = _when(datetime.now(UTC)), sweeplab_version()
    section = _sweep_section(engine, sweep_id, figures, generated, version, detect)
    return _render({"title": f"{section['sweep'].name} — sweep report", "heading": section["sweep"].name,
                    "subtitle": "Sweep report", "study": None, "questions": None, "questions_missing": None,
                    "sections": [section], "generated": generated, "version": version}, figures, plotly_js)


def _questions(questions: list[dict[str, Any]], figures: _Figures) -> list[dict[str, Any]]:
    out = []
    for q in questions:
        verdicts = q.get("verdicts") if isinstance(q.get("verdicts"), dict) else None
        key = str(q.get("metric") or PRIMARY_KEY)
        chart = figures.add(figs.question_figure(q), f"Final {metrics.describe(key).title} of each config compared: "
                                                    f"the mean with its 95% confidence interval; dots are replicates.")
        out.append({"ask": str(q.get("ask") or ""), "text": str(q.get("text") or ""), "verdicts": verdicts,
                    "rows": _verdict_rows(verdicts) if verdicts else [], "unit": "points" if unit(key) else "",
                    "sentences": [c["text"] for c in (verdicts or {}).get("comparisons") or [] if c.get("text")],
                    "figure": chart})
    return out


def study_report_html(engine: Engine, study: str, plotly_js: Path, detect: float | None = None) -> str:
    """The study's report: its questions with their answers, then every sweep of the study in turn."""
    sweeps = study_sweeps(engine, study)
    figures = _Figures()
    generated, version = _when(datetime.now(UTC)), sweeplab_version()
    questions, questions_missing = _section(study_questions, engine, study)
    answers = _questions(questions, figures) if questions is not None else None  # first: figures in page order
    sections = [_sweep_section(engine, sw.id, figures, generated, version, detect) for sw in sweeps]
    return _render({"title": f"{study} — study report", "heading": study,
                    "subtitle": f"Study report: {len(sweeps)} sweep{'s' * (len(sweeps) != 1)}", "study": study,
                    "questions": answers,
                    "questions_missing": questions_missing, "sections": sections, "generated": generated,
                    "version": version}, figures, plotly_js)
