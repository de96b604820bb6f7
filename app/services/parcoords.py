"""A sweep's configs in parallel coordinates: one axis per setting that varies across its configs,
then the mean final value of a metric, which also colours the lines. Plotly-ready (`parcoords`
dimensions); shared by the sweep page and the report. Settings are named as app.services.importance
names its factors (an external config's nested keys as dotted paths, a config lacking a key as
NOT_SET); finals are app.services.finals' (succeeded runs only), so the answer is cached while the
sweep's run statuses hold (app.services.memo)."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import Engine

from app import metrics
from app.metrics import PRIMARY_KEY
from app.services import stats
from app.services.axes import describe_axis
from app.services.charts import config_rows
from app.services.finals import final_values
from app.services.importance import NOT_SET, flatten
from app.services.memo import memo
from app.services.snapshots import Scope, snapshot
from app.services.sweeps import get_sweep_row

MAX_TICKS = 12  # a numeric axis with more distinct values than this gets Plotly's own ticks


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _varying(params: list[dict[str, Any]]) -> list[tuple[str, list[Any], bool]]:
    """(path, distinct values in config order, whether some config lacks it) for each setting
    whose value is not the same in every config."""
    paths: dict[str, dict[str, Any]] = {}
    for p in params:
        for path, v in p.items():
            paths.setdefault(path, {}).setdefault(_key(v), v)
    out = []
    for path, values in paths.items():
        missing = any(path not in p for p in params)
        if len(values) > 1 or missing:
            out.append((path, list(values.values()), missing))
    return out


def _dimension(path: str, values: list[Any], missing: bool, shown: list[dict[str, Any]]) -> dict[str, Any]:
    """One parcoords axis for PATH over the configs SHOWN. Numbers stay numbers (log-scaled
    ones drawn at their logarithm, ticks labelled with the values); everything else, and any
    setting some config lacks, is a category at 0, 1, 2... labelled with its readable value."""
    axis = describe_axis(path, values)
    position = {_key(v): i for i, v in enumerate(values)}
    if axis["kind"] == "category" or missing:
        labels = axis["labels"] + ([NOT_SET] if missing else [])
        index = [position[_key(p[path])] if path in p else len(values) for p in shown]
        return {"label": axis["title"], "path": path, "kind": "category", "values": index,
                "tickvals": list(range(len(labels))), "ticktext": labels, "range": [0, max(len(labels) - 1, 1)]}
    log = axis["kind"] in ("log2", "log10")
    base = 2.0 if axis["kind"] == "log2" else 10.0
    at = [math.log(x, base) if log else x for x in axis["x"]]
    dim: dict[str, Any] = {"label": axis["title"] + (f" (log{'₂' if base == 2 else '₁₀'})" if log else ""),
                           "path": path, "kind": axis["kind"],
                           "values": [at[position[_key(p[path])]] for p in shown], "range": [min(at), max(at)]}
    if len(at) <= MAX_TICKS or log:
        order = sorted(range(len(at)), key=lambda i: at[i])
        dim["tickvals"] = [at[i] for i in order]
        dim["ticktext"] = [axis["labels"][i] for i in order]
    if dim["range"][0] == dim["range"][1]:
        dim["range"] = [dim["range"][0] - 1, dim["range"][1] + 1]
    return dim


def _mean_finals(engine: Engine, sweep_id: int, metric: str) -> dict[int, tuple[float, int]]:
    """Per config: the mean of METRIC's finite finals over succeeded runs (app.services.finals) and
    how many there are."""
    out = {}
    for config_id, rows in final_values(engine, sweep_id=sweep_id, key=metric).items():
        xs = stats.finite([v for _, _, v in rows])
        if xs:
            out[config_id] = (math.fsum(xs) / len(xs), len(xs))
    return out


def _parcoords(engine: Engine, sweep_id: int, metric: str) -> dict[str, Any]:
    configs = [{**c, "params": flatten(c["params"] or {})} for c in config_rows(engine, Scope(sweep_id))]
    finals = _mean_finals(engine, sweep_id, metric)
    shown = [c for c in configs if c["id"] in finals]
    info = metrics.describe(metric)
    dimensions = [_dimension(path, values, missing, [c["params"] for c in shown])
                  for path, values, missing in _varying([c["params"] for c in configs])]
    means = [finals[c["id"]][0] for c in shown]
    title = f"mean final {info.title}"
    metric_axis: dict[str, Any] = {"label": title, "path": None, "kind": "metric", "values": means}
    if means:
        lo, hi = min(means), max(means)
        pad = 0.0 if hi > lo else 0.01 * (abs(lo) or 1.0)  # one value: a little room around it
        metric_axis["range"] = [lo - pad, hi + pad]
    return {"sweep_id": sweep_id, "metric": metric, "title": title, "higher_is_better": info.higher_is_better,
            "dimensions": [*dimensions, metric_axis], "color": means,
            "config_ids": [c["id"] for c in shown], "labels": [c["label"] for c in shown],
            "n": [finals[c["id"]][1] for c in shown], "configs": len(configs)}


def parcoords(engine: Engine, sweep_id: int, metric: str = PRIMARY_KEY) -> dict[str, Any]:
    """Plotly `parcoords` data of a sweep's configs with at least one succeeded run with a finite
    final METRIC: `dimensions` (one per varying setting, each {label, values, tickvals?,
    ticktext?, range}; the last the mean final METRIC), `color` (those means), `config_ids`,
    `labels` and `n` (finals per config) in the same order."""
    get_sweep_row(engine, sweep_id)
    snap = snapshot(engine, Scope(sweep_id))
    return memo.get((engine.url, "parcoords", sweep_id, metric), snap.status_digest,
                    lambda: _parcoords(engine, sweep_id, metric))
