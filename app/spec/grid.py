"""The grid of a sweep: which dotted paths it may sweep, the checks on each axis, and how a combination of
values is written into a config's settings."""

from __future__ import annotations

import copy
from typing import Any

from app.listed_values import check_listed_values

MAX_GRID_VALUES = 1000

GRID_PATHS: frozenset[str] = frozenset(
    {
        "dataset",
        "loss",
        "epochs",
        "batch_size",
        "limit.train",
        "limit.test",
        "model.hidden",
        "model.layers",
        "model.builder",
        "model.activation",
        "model.output_activation",
        "optimizer.name",
        "optimizer.learning_rate",
    }
)


# Beyond GRID_PATHS a grid may name any setting the spec has under these: a layer's field by the
# layer's index (model.layers.0.conv2d.filters) or a key of params (params.dropout).
OPEN_GRID_PREFIXES = ("model.layers.", "params.")


def _check_grid_axis(path: str, values: list[Any], base: dict[str, Any]) -> None:
    if path not in GRID_PATHS and not (path.startswith(OPEN_GRID_PREFIXES) and _has_path(base, path)):
        raise ValueError(f"grid: unknown path {path!r}; choose from {', '.join(sorted(GRID_PATHS))}, a field of a "
                         f"layer the spec has (model.layers.0.conv2d.filters) or a key the spec's params have "
                         f"(params.dropout)")
    if not values:
        raise ValueError(f"grid.{path}: give at least one value")
    if len(values) > MAX_GRID_VALUES:
        raise ValueError(f"grid.{path}: at most {MAX_GRID_VALUES} values")
    check_listed_values(values, f"grid.{path}: ")


def _index(part: str, node: list[Any]) -> int | None:
    """A list index as a path part: canonical digits only ("0", "12"; not "01" or "-1"), in range."""
    if part.isdigit() and str(int(part)) == part and int(part) < len(node):
        return int(part)
    return None


def _has_path(data: Any, path: str) -> bool:
    """Whether PATH names a setting DATA has (a list's items by index)."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and (i := _index(part, node)) is not None:
            node = node[i]
        else:
            return False
    return True


def _apply(base: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, value in combo.items():
        node: Any = out
        parts = path.split(".")
        for n, p in enumerate(parts):
            if isinstance(node, list) and (i := _index(p, node)) is not None:
                key: Any = i
            elif isinstance(node, dict) and (p in node or not path.startswith(OPEN_GRID_PREFIXES)):
                key = p
            else:  # an earlier axis replaced what this one names (model.layers, then model.layers.0....)
                raise ValueError(f"grid: {path} names no setting of the config {combo}")
            if n == len(parts) - 1:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return out
