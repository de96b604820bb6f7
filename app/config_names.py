"""How the pages name a config: the one rule for the "base" config and for the groups of the sweep
chart, so no page spells a copy of `app.spec.describe_params` (the pages get the names as JSON)."""

from __future__ import annotations

from typing import Any

from app.spec import describe_params

BASE_LABEL = describe_params({})  # the label of a sweep's only config when it has no grid


def config_name(sweep_name: str, label: str, *, within_sweep: bool = False) -> str:
    """The base config goes by its sweep's name; others by their label, after the sweep's name
    unless the page shows one sweep only."""
    if label == BASE_LABEL:
        return sweep_name
    return label if within_sweep else f"{sweep_name} · {label}"


def axis_groups(params: dict[str, Any]) -> dict[str, str]:
    """Per swept path, the label of the config's other swept values: the sweep chart draws the
    configs that share it as one line against that path ("" when nothing else is swept)."""
    return {path: describe_params(rest) if (rest := {k: v for k, v in params.items() if k != path}) else ""
            for path in params}
