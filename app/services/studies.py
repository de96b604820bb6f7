"""Studies: the sweeps that share a `study` name, rolled up for the index page and read together
for the study page (its questions are app.services.questions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from app.db import read_session
from app.errors import NotFound
from app.models import Config, Run, RunStatus, Sweep, SweepKind
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
    the compare page. The counts come from one grouped query over every study's runs."""
    with read_session(engine) as s:
        rows = s.execute(select(Sweep.study, Sweep.id, Run.status, func.count(Run.id))
                         .outerjoin(Run, Run.sweep_id == Sweep.id).where(Sweep.study.is_not(None))
                         .group_by(Sweep.study, Sweep.id, Run.status).order_by(Sweep.id)).all()
    singles = single_configs(engine, sorted({sweep_id for _, sweep_id, _, _ in rows}))
    studies: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for study, sweep_id, status, n in rows:  # oldest sweep first
        assert study is not None  # the query keeps sweeps with a study
        st = studies.setdefault(study, {"name": study, "sweeps": 0, "runs": 0, "configs": [],
                                        "counts": dict.fromkeys((s.value for s in RunStatus), 0)})
        if sweep_id not in seen:
            seen.add(sweep_id)
            st["sweeps"] += 1
            if sweep_id in singles:
                st["configs"].append(singles[sweep_id])
        if status is not None:
            st["runs"] += n
            st["counts"][status] += n
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
             "kind": (SweepKind.EXTERNAL if sw.spec.get("external") else SweepKind.QUEUED).value, "dataset": sw.dataset,
             "runs": sw.runs, "configs": sw.configs, "status_counts": sw.status_counts.model_dump(),
             "best": best.get(sw.id)} for sw in sweeps]
