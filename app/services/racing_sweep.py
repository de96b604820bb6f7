"""One sweep's race from the database (app.services.racing): its configs' seeds and finals, replayed
(`race_of`) into a `Race` that says which configs want seeds next. Read fresh every time, so any
number of planners agree and one killed mid-way leaves nothing half-decided."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import statuses
from app.db import read_session
from app.models import Config, Run, RunStatus, Sweep
from app.services.finals import final_rows_query
from app.services.racing_plan import RacePlan, plan_for
from app.services.racing_replay import RaceState, replay
from app.spec import SweepSpec

FINAL_STATUSES = frozenset(s.value for s in statuses.FINAL)  # the catalogue's final statuses, as stored
PRUNED = RunStatus.PRUNED.value


@dataclass(frozen=True)
class ConfigSeeds:
    """One config's runs as a race sees them: by seed order, (seed, status, final or None)."""

    config_id: int
    label: str
    runs: tuple[tuple[int, str, float | None], ...]

    @property
    def pruned(self) -> bool:
        return any(status == PRUNED for _, status, _ in self.runs)


def race_inputs(session: Session, sweep_id: int, metric: str) -> list[ConfigSeeds]:
    """The sweep's configs in position order with their runs and finals of METRIC."""
    configs = session.execute(select(Config.id, Config.label).where(Config.sweep_id == sweep_id)
                              .order_by(Config.position)).all()
    runs = session.execute(select(Run.config_id, Run.seed, Run.status, Run.id).where(Run.sweep_id == sweep_id)).all()
    finals = {row[0]: row[4] for row in session.execute(final_rows_query(Run.sweep_id == sweep_id, [metric]))}
    by_config: dict[int, list[tuple[int, str, float | None]]] = {c.id: [] for c in configs}
    for config_id, seed, status, run_id in runs:
        value = finals.get(run_id)
        by_config.setdefault(config_id, []).append(
            (int(seed), status, float(value) if value is not None and math.isfinite(value) else None))
    return [ConfigSeeds(c.id, c.label, tuple(sorted(by_config[c.id]))) for c in configs]


def arrays(configs: Sequence[ConfigSeeds], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One race's VALUES, ENDED, OUT for `replay` (R = 1), WIDTH seeds wide."""
    k = len(configs)
    values, ended = np.full((1, k, width), np.nan), np.zeros((1, k, width), bool)
    for j, c in enumerate(configs):
        for i, (_, status, value) in enumerate(c.runs[:width]):
            values[0, j, i] = np.nan if value is None else value
            ended[0, j, i] = status in FINAL_STATUSES
    out = np.array([[c.pruned for c in configs]], bool)
    return values, ended, out


@dataclass(frozen=True)
class Race:
    """One sweep's race as it stands: the plan, the configs and the replayed state (R = 1)."""

    plan: RacePlan
    configs: list[ConfigSeeds]
    state: RaceState
    metric: str

    def wanted(self) -> list[tuple[int, int]]:
        """(config id, new seeds) each config still racing needs for the next look: none while the
        current look waits on runs, or once the race is over."""
        st = self.state
        if st.done[0]:
            return []
        look = int(st.looks_done[0])
        if look >= self.plan.looks:
            return []
        n = self.plan.sizes[look]
        out = []
        for j, c in enumerate(self.configs):
            if st.settled[0, j] or c.pruned:
                continue
            if len(c.runs) < n:
                out.append((c.config_id, n - len(c.runs)))
        return out


def race_of(session: Session, sweep: Sweep, spec: SweepSpec) -> Race | None:
    """The sweep's race (None without one), read in SESSION."""
    if spec.race is None:
        return None
    configs = race_inputs(session, sweep.id, spec.race.metric)
    plan = plan_for(spec, len(configs))
    if plan is None or not configs:
        return None
    values, ended, out = arrays(configs, plan.sizes[-1])
    return Race(plan, configs, replay(values, ended, out, plan), spec.race.metric)


def next_seeds(session: Session, sweep: Sweep, configs: Sequence[Config]) -> list[tuple[int, int]]:
    """The planner's hook (app.services.planner, under the sweep's lock): (config id, new seeds) for
    each config still racing once every racing config's current round has ended."""
    from app.services.planner import stored_spec

    spec = stored_spec(sweep)
    race = race_of(session, sweep, spec) if spec is not None else None
    return race.wanted() if race is not None else []


def spec_of(sweep: Sweep) -> SweepSpec | None:
    from app.services.planner import stored_spec

    return stored_spec(sweep)


def read_race(engine: Engine, sweep_id: int) -> Race | None:
    """The race of a sweep as it stands (read-only; None for a sweep without one)."""
    with read_session(engine) as s:
        sweep = s.get(Sweep, sweep_id)
        spec = spec_of(sweep) if sweep is not None else None
        if sweep is None or spec is None:
            return None
        return race_of(s, sweep, spec)
