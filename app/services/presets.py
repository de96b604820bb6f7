"""Built-in presets: YAML files under presets/, each one or more sweep specs (YAML documents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from app.config import PROJECT_ROOT
from app.errors import NotFound
from app.schemas import SweepPublic
from app.services.sweeps import create_sweep, parse_spec

PRESETS_DIR = PROJECT_ROOT / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_documents(name: str) -> list[dict[str, Any]]:
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in preset_names() or not path.is_file():
        raise NotFound(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def list_presets() -> list[dict[str, Any]]:
    out = []
    for name in preset_names():
        specs = [parse_spec(d) for d in preset_documents(name)]
        out.append({"name": name, "sweeps": [s.name for s in specs], "runs": sum(s.run_count() for s in specs)})
    return out


def submit_preset(engine: Engine, name: str, max_runs: int, max_attempts: int) -> list[SweepPublic]:
    """Validate every sweep of the preset first, then create them all."""
    specs = [parse_spec(d) for d in preset_documents(name)]
    return [create_sweep(engine, spec, max_runs, max_attempts) for spec in specs]
