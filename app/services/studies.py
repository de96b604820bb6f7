"""Studies: the sweeps that share a `study` name, rolled up for the index page and read together
for the study page (its questions are app.services.questions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from app.db import read_session
from app.errors import NotFound
from app.models import Config, RunStatus
from app.schemas import SweepPublic
from app.services.results import best_configs
from app.services.sweeps import list_sweeps

MAX_SWEEPS = 1000  # the newest sweeps a roll-up reads


def single_configs(engine: Engine, sweep_ids: Sequence[int]) -> dict[int, int]:
    """For each of SWEEP_IDS that has exactly one config (no grid), that config's id."""
    if not sweep_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(select(Config.sweep_id, func.min(Config.id)).where(Config.sweep_id.in_(list(sweep_ids)))
                         .group_by(Config.sweep_id).having(func.count() == 1)).all()
    return {sweep_id: config_id for sweep_id, config_id in rows}


def list_studies(engine: Engine) -> list[dict[str, Any]]:
    """Each study by name: its number of sweeps and runs, its runs by status, and the configs of its
    one-config sweeps in the study's own order (oldest sweep first), which the index page links to
    the compare page."""
    everything = [sw for sw in list_sweeps(engine, limit=MAX_SWEEPS) if sw.study]
    singles = single_configs(engine, [sw.id for sw in everything])
    studies: dict[str, dict[str, Any]] = {}
    for sw in reversed(everything):  # oldest first
        assert sw.study is not None
        st = studies.setdefault(sw.study, {"name": sw.study, "sweeps": 0, "runs": 0, "configs": [],
                                           "counts": dict.fromkeys((s.value for s in RunStatus), 0)})
        st["sweeps"] += 1
        st["runs"] += sw.runs
        for key, n in sw.status_counts.model_dump().items():
            st["counts"][key] += n
        if sw.id in singles:
            st["configs"].append(singles[sw.id])
    return sorted(studies.values(), key=lambda st: st["name"])


def study_sweeps(engine: Engine, study: str) -> list[SweepPublic]:
    """The sweeps of STUDY, oldest first (the order its spec file lists them in); NotFound when it has none."""
    sweeps = list_sweeps(engine, study, limit=MAX_SWEEPS)
    if not sweeps:
        raise NotFound(f"study {study[:200]!r} not found")
    return sweeps[::-1]


def sweep_summaries(engine: Engine, sweeps: Sequence[SweepPublic]) -> list[dict[str, Any]]:
    """What the study page shows of each sweep: name, description, kind, runs by status, number of
    configs and its best config by mean final primary metric (app.services.results.best_configs)."""
    best = best_configs(engine, [sw.id for sw in sweeps])
    return [{"id": sw.id, "name": sw.name, "description": sw.spec.get("description"),
             "kind": "external" if sw.spec.get("external") else "queued", "dataset": sw.dataset,
             "runs": sw.runs, "configs": sw.configs, "status_counts": sw.status_counts.model_dump(),
             "best": best.get(sw.id)} for sw in sweeps]
