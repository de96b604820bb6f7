"""The report's data: one section per sweep (config table, curves, final-vs-setting charts,
verdicts, importance, parallel coordinates, provenance, methods) and the study's questions, each
gathered from its own service; the charts go to one `Figures` list in page order.

A section whose service is missing or refuses the sweep (too few replicates, say) is shown as not
available, with the reason, rather than failing the whole report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from app import metrics
from app.config_names import axis_groups, config_name
from app.errors import SweeplabError
from app.metrics import PRIMARY_KEY
from app.schemas import SweepPublic
from app.services import charts, metric_keys, results
from app.services import report_figures as figs
from app.services.importance import sweep_importance
from app.services.latex import final_metric_keys, scaled, varying_axes
from app.services.parcoords import parcoords
from app.services.provenance import sweep_provenance
from app.services.report_format import DASH, capital, fmt_p, fmt_value, seed_ranges, unit, when
from app.services.report_methods import methods, power_sentence, provenance_rows
from app.services.sweeps import read_sweep
from app.services.verdicts import sweep_verdicts

MAX_CURVE_CONFIGS = 12  # configs drawn in the curve charts (the best by mean final primary metric)
NOT_AVAILABLE = "not available"


def section(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """(CALL's answer, None), or (None, why the section is not available) when it refuses."""
    try:
        return call(*args, **kwargs), None
    except SweeplabError as exc:
        return None, f"{NOT_AVAILABLE}: {exc.message}"


class Figures:
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


def sweep_section(engine: Engine, sweep_id: int, figures: Figures, generated: str, version: str,
                  detect: float | None) -> dict[str, Any]:
    """One sweep's part of the report (templates/report.html's `sections`); its charts added to FIGURES."""
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
        verdicts, verdicts_missing = section(sweep_verdicts, engine, sweep_id, metric=PRIMARY_KEY, detect=detect)
        importance, importance_missing = section(sweep_importance, engine, sweep_id, PRIMARY_KEY)
        par, par_missing = section(parcoords, engine, sweep_id, PRIMARY_KEY)
    importance_fig = figures.add(figs.importance_figure(importance) if importance else None,
                                 "Share of the variance of the final metric explained by each setting (η², type II "
                                 "ANOVA) with 95% bootstrap confidence intervals; grey: the seeds (residual).")
    par_fig = figures.add(figs.parcoords_figure(par) if par else None,
                          "Each line is a config: its settings on the first axes, its mean final metric on the last "
                          "axis and as its colour. Drag along an axis to pick configs.")
    if par is not None and par_fig is None:
        par_missing = "nothing to draw: fewer than two configs with a final value, or no setting that varies"
    prov = sweep_provenance(engine, sweep_id)
    power = power_sentence(PRIMARY_KEY, verdicts.get("power")) if verdicts else None
    summary = [capital(t) for t in ((verdicts or {}).get("text"), power) if t]
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
        "created": when(sweep.created_at),
        "description": sweep.spec.get("description") or "", "kind": sweep.spec.get("kind", ""),
        "table": _table(sweep, rows), "primary": metrics.describe(PRIMARY_KEY).title,
        "curves": curve_figs, "sweep_figures": sweep_figs, "grid": bool(axes) and len(rows) > 1,
        "verdicts": verdicts, "verdict_rows": _verdict_rows(verdicts) if verdicts else [],
        "verdict_unit": "points" if unit(PRIMARY_KEY) else "", "verdicts_missing": verdicts_missing,
        "power": power,
        "importance": importance, "importance_figure": importance_fig, "importance_missing": importance_missing,
        "parcoords": par_fig, "parcoords_missing": par_missing,
        "provenance": provenance_rows(prov),
        "methods": methods(sweep, rows, axes, verdicts, importance, prov, generated, version),
    }


def question_sections(questions: list[dict[str, Any]], figures: Figures) -> list[dict[str, Any]]:
    """The study's questions as the report shows them, each answer's chart added to FIGURES."""
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
