"""How to draw a sweep's swept settings on the x axis of its charts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

WIDTH_PATHS = frozenset({"model.hidden", "batch_size", "limit.train", "limit.test"})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def describe_axis(path: str, values: list[Any]) -> dict[str, Any]:
    """How to draw a swept setting on an x axis: log2 for widths and sizes, log10 for rates that span
    decades, linear for other numbers, else categories. A list value such as [32, 64] that varies in
    one position is drawn at that position's number and labelled with the whole list."""
    labels = [_label(v) for v in values]
    axis = {"path": path, "kind": "category", "values": values, "x": labels, "labels": labels, "title": path}
    if values and all(_is_number(v) for v in values):
        xs = [float(v) for v in values]
    elif values and all(isinstance(v, list) and v and all(_is_number(w) for w in v) for v in values) \
            and len({len(v) for v in values}) == 1:
        varying = [i for i in range(len(values[0])) if len({v[i] for v in values}) > 1]
        if len(varying) != 1:
            return axis
        k = varying[0]
        xs = [float(v[k]) for v in values]
        layer = f"width of layer {k + 1}" if path == "model.hidden" else f"item {k + 1}"
        axis["title"] = f"{path} ({layer})"
    else:
        return axis
    return {**axis, "kind": _scale(path, xs), "x": xs}


def _scale(path: str, xs: list[float]) -> str:
    positive = all(x > 0 for x in xs)
    powers_of_two = all(x > 0 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0 for x in xs)
    if positive and (path in WIDTH_PATHS or (powers_of_two and len(xs) > 2)):
        return "log2"
    if positive and max(xs) / min(xs) >= 10:
        return "log10"
    return "linear"


def describe_axes(params: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One axis per swept setting, its distinct values in grid order."""
    values: dict[str, dict[str, Any]] = {}
    for p in params:
        for path, v in p.items():
            values.setdefault(path, {}).setdefault(json.dumps(v, sort_keys=True), v)
    return [describe_axis(path, list(vs.values())) for path, vs in values.items()]
