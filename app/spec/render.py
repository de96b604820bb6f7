"""How a spec and a config read to people: a spec as YAML (as spec files are written) and a config's short label."""

from __future__ import annotations

import json
from typing import Any

import yaml


class _SpecDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing lists on one line as spec files do (`hidden: [32, 64]`,
    `model.hidden: [[8], [16]]`) and mappings as blocks."""


def _flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_SpecDumper.add_representer(list, _flow_list)


def spec_yaml(data: dict[str, Any]) -> str:
    """A spec (as JSON) as YAML that `sweeplab submit` and POST /api/sweeps read back unchanged."""
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True)


def describe_params(params: dict[str, Any]) -> str:
    """A short human label for a config, e.g. 'hidden=[32, 64] · lr=0.01'."""
    if not params:
        return "base"
    short = {"model.hidden": "hidden", "optimizer.learning_rate": "lr", "optimizer.name": "optimizer"}
    return " · ".join(f"{short.get(k, k.split('.')[-1])}={json.dumps(v)}" for k, v in params.items())
