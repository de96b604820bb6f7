"""Drawing the next configs of a random or TPE search (method random / tpe of a sweep spec).

Random: config k's values come from a generator seeded by (search_seed, k, attempt) alone, so the same
seed gives the same sequence of configs whatever the timing of the workers (an attempt after 0 only
when a draw repeats an earlier config or makes an invalid one).

TPE: Optuna's TPESampler through ask-and-tell, Optuna as a library: for each new config an in-memory
study is rebuilt from sweeplab's configs and their runs (a finished config is a complete trial whose
value is the mean final metric over its succeeded replicates; a config with runs still queued or
running a running trial, which `constant_liar` keeps the sampler away from; a config whose runs were
all pruned a pruned trial at its last epoch; a config none of whose runs succeeded a failed trial),
so whichever process asks sees every finished config, and nothing of Optuna is stored. The sampler
of config k is seeded by (search_seed, k): its first `n_startup_trials` configs are Optuna's random
ones, the same for the same seed.

A choice's values reach Optuna as their indices (its categorical choices are scalars only).
"""

from __future__ import annotations

import enum
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.adaptive_spec import Distribution
from app.metrics import PRIMARY_KEY, describe
from app.models import Config, Metric, Run, RunStatus
from app.spec import ExpandedConfig, SweepSpec, content_key

if TYPE_CHECKING:
    import optuna

MAX_ATTEMPTS = 100  # draws per config before the search gives up on finding a new one
OPTUNA_STARTUP = 10  # Optuna's default n_startup_trials, at most half of max_configs
SUCCEEDED, PRUNED = RunStatus.SUCCEEDED.value, RunStatus.PRUNED.value
UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def objective_metric(spec: SweepSpec) -> str:
    """What a search optimises: the race's metric, else the pruner's, else the primary metric."""
    if spec.race is not None:
        return spec.race.metric
    if spec.prune is not None:
        return spec.prune.metric
    return PRIMARY_KEY


def maximise(metric: str) -> bool:
    """A metric where lower is better (a loss) is minimised; any other maximised (as the progress chart ranks)."""
    return describe(metric).higher_is_better is not False


def draw_seed(search_seed: int, k: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([search_seed, k, attempt])


def _draw(dist: Distribution, rng: np.random.Generator) -> Any:
    if dist.loguniform is not None:
        lo, hi = dist.loguniform
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist.uniform is not None:
        return float(rng.uniform(*dist.uniform))
    if dist.integer is not None:
        return int(rng.integers(dist.integer[0], dist.integer[1], endpoint=True))
    assert dist.choice is not None
    return dist.choice[int(rng.integers(len(dist.choice)))]


def random_params(spec: SweepSpec, k: int, attempt: int = 0) -> dict[str, Any]:
    """Config K's values of a random search (its ATTEMPT-th draw), path by path in the spec's order."""
    assert spec.search is not None
    rng = draw_seed(spec.search_seed or 0, k, attempt)
    return {path: _draw(dist, rng) for path, dist in spec.search.items()}


def _valid(spec: SweepSpec, params: dict[str, Any], taken: set[str]) -> ExpandedConfig | None:
    """The config PARAMS make, unless it is invalid or one the sweep already has (by config key)."""
    try:
        config = spec.config_for(params)
    except ValueError:  # pydantic's ValidationError too
        return None
    return None if config.key in taken else config


class TrialOutcome(enum.Enum):
    """A config as an Optuna trial: each member is named as the member of optuna's TrialState it becomes
    (a trial's state, not a run's status: a config is RUNNING while any of its runs is queued or running)."""

    COMPLETE = enum.auto()
    RUNNING = enum.auto()
    PRUNED = enum.auto()
    FAIL = enum.auto()


@dataclass(frozen=True)
class Trial:
    """What a search knows of one of its configs."""

    params: dict[str, Any]
    state: TrialOutcome
    value: float | None = None  # complete: the mean final metric; pruned: the mean at its last epoch
    step: int | None = None  # pruned: that epoch


def trials(session: Session, configs: Sequence[Config], metric: str) -> list[Trial]:
    """The search's configs as trials, in position order, read in SESSION (under the planner's lock)."""
    ids = [c.id for c in configs]
    if not ids:
        return []
    status_rows = session.execute(select(Run.config_id, Run.status, func.count()).where(Run.config_id.in_(ids))
                                  .group_by(Run.config_id, Run.status)).all()
    statuses: dict[int, dict[str, int]] = defaultdict(dict)
    for config_id, status, n in status_rows:
        statuses[config_id][status] = n
    last = (select(Metric.run_id.label("run_id"), func.max(Metric.epoch).label("epoch"))
            .join(Run, Run.id == Metric.run_id)
            .where(Run.config_id.in_(ids), Run.status.in_([SUCCEEDED, PRUNED]), Metric.key == metric)
            .group_by(Metric.run_id)).subquery("last_epochs")
    value_rows = session.execute(
        select(Run.config_id, Run.status, Metric.epoch, Metric.value)
        .join(last, last.c.run_id == Run.id)
        .join(Metric, and_(Metric.run_id == last.c.run_id, Metric.key == metric, Metric.epoch == last.c.epoch))
    ).all()
    values: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for config_id, status, epoch, value in value_rows:
        if value is not None and math.isfinite(value):
            values[(config_id, status)].append((epoch, value))
    out = []
    for c in configs:
        counts = statuses.get(c.id, {})
        done = values.get((c.id, SUCCEEDED), [])
        pruned = values.get((c.id, PRUNED), [])
        if any(counts.get(s, 0) for s in UNFINISHED):
            out.append(Trial(c.params, TrialOutcome.RUNNING))
        elif done:
            out.append(Trial(c.params, TrialOutcome.COMPLETE, float(np.mean([v for _, v in done]))))
        elif pruned:
            step = max(e for e, _ in pruned)
            out.append(Trial(c.params, TrialOutcome.PRUNED, float(np.mean([v for _, v in pruned])), step))
        else:
            out.append(Trial(c.params, TrialOutcome.FAIL))
    return out


def _distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert spec.search is not None
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for path, d in spec.search.items():
        if d.loguniform is not None:
            out[path] = FloatDistribution(*d.loguniform, log=True)
        elif d.uniform is not None:
            out[path] = FloatDistribution(*d.uniform)
        elif d.integer is not None:
            out[path] = IntDistribution(*d.integer)
        else:
            assert d.choice is not None
            out[path] = CategoricalDistribution(list(range(len(d.choice))))
    return out


def _to_optuna(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any] | None:
    """A config's values as Optuna's params (a choice by its index); None if one lies outside the search."""
    assert spec.search is not None
    out: dict[str, Any] = {}
    for path, d in spec.search.items():
        if path not in params:
            return None
        value = params[path]
        if d.choice is not None:
            keys = [content_key(v) for v in d.choice]
            if content_key(value) not in keys:
                return None
            out[path] = keys.index(content_key(value))
        else:
            bounds = d.loguniform or d.uniform or d.integer
            assert bounds is not None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not bounds[0] <= value <= bounds[1]:
                return None
            out[path] = value
    return out


def _from_optuna(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    assert spec.search is not None
    return {path: d.choice[int(params[path])] if d.choice is not None
            else int(params[path]) if d.integer is not None else float(params[path])
            for path, d in spec.search.items()}


def startup_trials(spec: SweepSpec) -> int:
    """TPE's random configs before it models: Optuna's default 10, at most half of max_configs (at least 1)."""
    return max(1, min(OPTUNA_STARTUP, (spec.max_configs or 2) // 2))


def tpe_params(spec: SweepSpec, k: int, known: Sequence[Trial]) -> dict[str, Any]:
    """Config K's values from TPE, told every trial in KNOWN (configs 0..K-1 and any asked before it)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = int(np.random.SeedSequence([spec.search_seed or 0, k]).generate_state(1)[0])
    distributions = _distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec), constant_liar=True)
    study = optuna.create_study(storage=None, sampler=sampler,
                                direction="maximize" if maximise(objective_metric(spec)) else "minimize")
    for t in known:
        params = _to_optuna(spec, t.params)
        if params is None:
            continue
        intermediate = None
        if t.state is TrialOutcome.PRUNED and t.step is not None and t.value is not None:
            intermediate = {t.step: t.value}
        study.add_trial(create_trial(state=TrialState[t.state.name], params=params, distributions=distributions,
                                     value=t.value if t.state is TrialOutcome.COMPLETE else None,
                                     intermediate_values=intermediate))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        asked = study.ask(distributions)
    return _from_optuna(spec, asked.params)


def next_configs(session: Session, spec: SweepSpec, configs: Sequence[Config], n: int) -> list[ExpandedConfig]:
    """Up to N new configs for the search (fewer when it finds no new valid one in MAX_ATTEMPTS draws),
    positions len(CONFIGS), len(CONFIGS) + 1, ... in order."""
    taken = {c.key for c in configs}
    known = trials(session, configs, objective_metric(spec)) if spec.method == "tpe" else []
    out: list[ExpandedConfig] = []
    for k in range(len(configs), len(configs) + n):
        found = None
        for attempt in range(MAX_ATTEMPTS):
            if spec.method == "tpe" and attempt == 0:
                params = tpe_params(spec, k, known)
            else:  # random, or TPE proposing a config the sweep has: a random draw of its own
                params = random_params(spec, k, attempt)
            found = _valid(spec, params, taken)
            if found is not None:
                break
        if found is None:
            break
        out.append(found)
        taken.add(found.key)
        known = [*known, Trial(found.params, TrialOutcome.RUNNING)]
    return out
