"""Early stopping (`prune: {method, metric, min_epochs, alpha}`): a config that cannot win stops, its
runs ending `pruned` with the epochs they trained.

Decided where epochs are recorded: after a worker records an epoch E of a pack, it waits (at most
a lease) while another config of the sweep is training on another worker and has not recorded E yet
(`lagging`: configs are judged at the same epoch, so a fast hopeless config does not run to its end
before the best reports), then `after_epoch` judges the sweep's configs at E, in one transaction under the sweep's lock
(app.services.planner.sweep_lock) and fenced by the pack's lease (a worker that lost its runs
decides nothing). A config is judged at E only from data that no longer change: every one of its
runs has recorded E (or ended before it); so is every config it is compared with. Pruning a config
is one conditioned UPDATE (its queued and running runs end pruned, the reason in `error`, an event
`pruned` each): a config is pruned at most once, whoever decides. A running run of it learns at its
worker's next fenced write (app.services.queue.record_epoch answers PRUNED), and its pack drops it
without disturbing the pack's other replicates. A pruned config retried (POST
/api/sweeps/{id}/retry) resumes from its checkpoints and is not pruned again.

Methods (epochs min_epochs .. E_max - 1 are the looks; E_max the sweep's most epochs):
- ci: at epoch E, each config's mean over its replicates has a one-sided t bound (n - 1 df) at
  level alpha / (2 C L): C configs (a search's max_configs), L = E_max - min_epochs looks. A config
  whose upper bound is below the best config's lower bound at the same epoch is pruned (for a
  metric where lower is better: lower bound above the best's upper bound). If every bound of every
  config at every look holds (chance at least 1 - alpha, Bonferroni over the 2 C L bounds), no
  config whose true mean at that epoch is the best's or better is ever pruned. It needs 2 replicates
  reporting the epoch. It says nothing about later epochs: a config that learns late can be pruned.
- median: Optuna's MedianPruner (n_startup_trials=0, n_warmup_steps=min_epochs, n_min_trials=1) on
  config means: pruned when its best mean so far is worse than the median of the other configs'
  means at that epoch (those that recorded it, pruned ones too, count as Optuna's completed trials,
  so the answer does not hang on which worker asks first).
- asha: Optuna's SuccessiveHalvingPruner (min_resource=min_epochs, reduction_factor=3,
  min_early_stopping_rate=0) on config means: at rungs min_epochs * 3^r a config goes on only if its
  mean is in the top third of the configs that reached that rung.
Both Optuna pruners run on a study rebuilt in memory from the database every time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, select, update
from sqlalchemy.orm import Session

from app.db import db_now, read_session, write_session
from app.metrics import describe
from app.models import Config, Metric, Run, RunEvent, RunStatus, Sweep, SweepKind
from app.services.queue import Claim
from app.spec import SweepSpec

QUEUED, RUNNING, PRUNED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.PRUNED.value
FINAL = frozenset(s.value for s in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED))
ASHA_REDUCTION = 3


@dataclass(frozen=True)
class PruneRule:
    """A sweep's prune block with what its correction counts: CONFIGS and the looks."""

    method: str
    metric: str
    min_epochs: int
    alpha: float
    configs: int
    epochs: int  # the sweep's most epochs
    higher_is_better: bool = True

    @property
    def looks(self) -> int:
        return max(0, self.epochs - self.min_epochs)

    @property
    def level(self) -> float:
        """ci: the one-sided level of each bound, alpha / (2 C L)."""
        return self.alpha / (2 * max(1, self.configs) * max(1, self.looks))

    def judges(self, epoch: int) -> bool:
        return self.min_epochs <= epoch < self.epochs


def rule_of(spec: SweepSpec, config_count: int) -> PruneRule | None:
    p = spec.prune
    if p is None:
        return None
    configs = max(config_count, spec.max_configs or 0) if spec.searching else config_count
    return PruneRule(p.method, p.metric, p.min_epochs, p.alpha, configs, spec.max_epochs(),
                     describe(p.metric).higher_is_better is not False)


# ---- the pure rules -------------------------------------------------------------------------

def _number(x: float, other: float) -> tuple[str, str]:
    """X and OTHER with the fewest significant digits (3 or more) that tell them apart."""
    for digits in range(3, 10):
        a, b = f"{x:.{digits}g}", f"{other:.{digits}g}"
        if a != b:
            return a, b
    return f"{x:.10g}", f"{other:.10g}"


@dataclass(frozen=True)
class Bounds:
    n: int
    mean: float
    low: float
    high: float


def bounds(values: Sequence[float], level: float) -> Bounds | None:
    """Mean over VALUES with its one-sided t bounds at LEVEL each (None with fewer than 2 values)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n < 2:
        return None
    from scipy import stats as scipy_stats

    mean = math.fsum(xs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(scipy_stats.t.isf(level, n - 1)) * sd / math.sqrt(n)
    return Bounds(n, mean, mean - half, mean + half)


def ci_decisions(values: Mapping[int, Sequence[float]], candidates: Sequence[int], rule: PruneRule, epoch: int,
                 labels: Mapping[int, str]) -> dict[int, str]:
    """Configs of CANDIDATES to prune at EPOCH by the ci rule, with the reason; VALUES: the metric at
    EPOCH of each config's replicates (every config whose data at EPOCH are complete)."""
    held = {c: b for c, xs in values.items() if (b := bounds(xs, rule.level)) is not None}
    if len(held) < 2:
        return {}
    sign = 1.0 if rule.higher_is_better else -1.0
    best = max(held, key=lambda c: sign * held[c].mean)
    top = held[best]
    out = {}
    confidence = f"{100 * (1 - rule.level):.4g}%"
    for c in candidates:
        b = held.get(c)
        if c == best or b is None:
            continue
        if rule.higher_is_better and b.high < top.low:
            mine, theirs = _number(b.high, top.low)
            words = f"upper bound {mine} below the best's lower bound {theirs}"
        elif not rule.higher_is_better and b.low > top.high:
            mine, theirs = _number(b.low, top.high)
            words = f"lower bound {mine} above the best's upper bound {theirs}"
        else:
            continue
        out[c] = (f"pruned at epoch {epoch}: {words} ({rule.metric}, {b.n} vs {top.n} seeds, the best "
                  f"{labels.get(best, best)}; one-sided {confidence} bounds: alpha {rule.alpha:g} over "
                  f"{rule.configs} configs x {rule.looks} epochs, both sides)")
    return out


def _study(higher: bool) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize" if higher else "minimize")


def _trial(curve: Mapping[int, float], state: str, attrs: Mapping[str, Any] | None = None) -> Any:
    from optuna.trial import TrialState, create_trial

    kind = getattr(TrialState, state)
    last = curve[max(curve)] if curve else None
    return create_trial(state=kind, value=last if kind == TrialState.COMPLETE else None,
                        intermediate_values=dict(curve), system_attrs=dict(attrs or {}))


def optuna_decisions(curves: Mapping[int, Mapping[int, float]], complete: Mapping[int, set[int]],
                     candidates: Sequence[int], pruned: set[int], rule: PruneRule, epoch: int) -> dict[int, str]:
    """Configs of CANDIDATES to prune at EPOCH by Optuna's MedianPruner or SuccessiveHalvingPruner on
    config means. CURVES: each config's mean per epoch (up to EPOCH); COMPLETE: the epochs at which a
    config's data are complete; PRUNED: configs pruned before (Optuna's pruned trials)."""
    from optuna.pruners import MedianPruner, SuccessiveHalvingPruner

    out = {}
    for c in candidates:
        if epoch not in curves.get(c, {}):
            continue
        study = _study(rule.higher_is_better)
        if rule.method == "median":
            pruner: Any = MedianPruner(n_startup_trials=0, n_warmup_steps=rule.min_epochs, n_min_trials=1)
            for o, curve in curves.items():
                if o != c and epoch in complete.get(o, set()):  # pruned ones too: the answer keeps no order
                    study.add_trial(_trial({e: v for e, v in curve.items() if e <= epoch}, "COMPLETE"))
        else:
            pruner = SuccessiveHalvingPruner(min_resource=rule.min_epochs, reduction_factor=ASHA_REDUCTION,
                                             min_early_stopping_rate=0)
            for o, curve in curves.items():
                if o != c:
                    study.add_trial(_trial({e: v for e, v in curve.items() if e <= epoch},
                                           "PRUNED" if o in pruned else "COMPLETE",
                                           _rungs(curve, complete.get(o, set()), rule, epoch + 1)))
        mine = {e: v for e, v in curves[c].items() if e <= epoch}
        study.add_trial(_trial(mine, "RUNNING", _rungs(mine, complete.get(c, set()), rule, epoch)))
        trial = study.trials[-1]
        if pruner.prune(study, trial):
            value = mine[epoch]
            if rule.method == "median":
                others = sorted(curve[epoch] for o, curve in curves.items()
                                if o != c and epoch in complete.get(o, set()))
                side = "below" if rule.higher_is_better else "above"
                half = len(others) // 2
                median = others[half] if len(others) % 2 else (others[half - 1] + others[half]) / 2
                out[c] = (f"pruned at epoch {epoch}: its best mean so far is {side} the median of the other "
                          f"configs' means, {median:.4g} ({rule.metric}; Optuna's MedianPruner on config means, "
                          f"{len(others)} other configs at this epoch)")
            else:
                rung = 0
                while rule.min_epochs * ASHA_REDUCTION ** (rung + 1) <= epoch:
                    rung += 1
                out[c] = (f"pruned at epoch {epoch}: its mean {value:.4g} is not in the top 1/{ASHA_REDUCTION} "
                          f"of the configs that reached rung {rung} ({rule.metric}; Optuna's "
                          f"SuccessiveHalvingPruner on config means)")
    return out


def _rungs(curve: Mapping[int, float], complete: set[int], rule: PruneRule, before: int) -> dict[str, float]:
    """Optuna's completed_rung_r attributes of a config: its mean at each rung step min_epochs*3^r
    below BEFORE at which its data are complete."""
    out, rung = {}, 0
    while (step := rule.min_epochs * ASHA_REDUCTION ** rung) < before:
        if step in complete and step in curve:
            out[f"completed_rung_{rung}"] = curve[step]
        else:
            break
        rung += 1
    return out


# ---- from the database ----------------------------------------------------------------------

def spec_of(sweep: Sweep) -> SweepSpec | None:
    """A queued sweep's spec if it prunes."""
    if sweep.kind != SweepKind.QUEUED.value or not isinstance(sweep.spec, dict) or not sweep.spec.get("prune"):
        return None
    from pydantic import ValidationError

    try:
        return SweepSpec.model_validate(sweep.spec)
    except ValidationError:
        return None


def pruning_sweeps(engine: Engine, sweep_ids: Sequence[int]) -> set[int]:
    """Which of SWEEP_IDS have a prune block (a worker asks once per pack)."""
    with read_session(engine) as s:
        rows = s.execute(select(Sweep.id, Sweep.spec).where(Sweep.id.in_(sorted(set(sweep_ids))),
                                                            Sweep.kind == SweepKind.QUEUED.value)).all()
    return {i for i, spec in rows if isinstance(spec, dict) and spec.get("prune")}


@dataclass(frozen=True)
class SweepRuns:
    labels: dict[int, str]
    runs: list[Any]  # (id, config_id, status, last_epoch)
    retried: set[int]  # configs pruned once and retried: never pruned again

    def complete_at(self, epoch: int) -> set[int]:
        """Configs whose every run has recorded EPOCH or ended before it (and one at least recorded it)."""
        ok: dict[int, bool] = {c: True for c in self.labels}
        reached: set[int] = set()
        for r in self.runs:
            if r.last_epoch >= epoch:
                reached.add(r.config_id)
            elif r.status not in FINAL:
                ok[r.config_id] = False
        return {c for c, fine in ok.items() if fine and c in reached}

    def pruned(self) -> set[int]:
        return {r.config_id for r in self.runs if r.status == PRUNED}

    def stoppable(self) -> set[int]:
        """Configs with runs still to stop (queued or running), not retried after a prune."""
        return {r.config_id for r in self.runs if r.status in (QUEUED, RUNNING)} - self.retried


def sweep_runs(session: Session, sweep_id: int) -> SweepRuns:
    labels = dict(session.execute(select(Config.id, Config.label).where(Config.sweep_id == sweep_id)).all())
    runs = list(session.execute(select(Run.id, Run.config_id, Run.status, Run.last_epoch)
                                .where(Run.sweep_id == sweep_id)).all())
    once = set(session.scalars(select(Run.config_id).join(RunEvent, RunEvent.run_id == Run.id)
                               .where(Run.sweep_id == sweep_id, RunEvent.kind == PRUNED).distinct()))
    live = {r.config_id for r in runs if r.status in (QUEUED, RUNNING)}
    return SweepRuns(labels, runs, once & live)


def decide(session: Session, sweep_id: int, spec: SweepSpec, epoch: int) -> dict[int, str]:
    """The configs to prune at EPOCH (config id -> reason), read in SESSION."""
    state = sweep_runs(session, sweep_id)
    rule = rule_of(spec, len(state.labels))
    if rule is None or not rule.judges(epoch):
        return {}
    complete = state.complete_at(epoch)
    candidates = sorted((complete & state.stoppable()) - state.pruned())
    if not candidates:
        return {}
    if rule.method == "ci":
        at = session.execute(select(Run.config_id, Metric.value).join(Run, Run.id == Metric.run_id).where(
            Metric.sweep_id == sweep_id, Metric.key == rule.metric, Metric.epoch == epoch)).all()
        values: dict[int, list[float]] = defaultdict(list)
        for config_id, value in at:
            if config_id in complete and value is not None:
                values[config_id].append(float(value))
        return ci_decisions(values, candidates, rule, epoch, state.labels)
    rows = session.execute(select(Run.config_id, Metric.epoch, Metric.value).join(Run, Run.id == Metric.run_id).where(
        Metric.sweep_id == sweep_id, Metric.key == rule.metric, Metric.epoch <= epoch, Metric.epoch >= 1)).all()
    sums: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for config_id, e, value in rows:
        if value is not None and math.isfinite(value):
            sums[config_id][e].append(float(value))
    curves = {c: {e: math.fsum(xs) / len(xs) for e, xs in by.items()} for c, by in sums.items()}
    done = {c: {e for e in range(1, epoch + 1) if c in state.complete_at(e)} for c in curves}
    return optuna_decisions(curves, done, candidates, state.pruned(), rule, epoch)


def prune_config(session: Session, config_id: int, reason: str, epoch: int) -> list[int]:
    """End the config's queued and running runs pruned (one conditioned UPDATE: a run that ended
    meanwhile is left alone); their lease token stays, so a worker holding one can tell its run
    was pruned, not lost. Answers the runs it ended."""
    ids = list(session.scalars(
        update(Run).where(Run.config_id == config_id, Run.status.in_([QUEUED, RUNNING]))
        .values(status=PRUNED, error=reason, finished_at=db_now(), lease_expires_at=None)
        .returning(Run.id)))
    for run_id in ids:
        session.add(RunEvent(run_id=run_id, kind=PRUNED, epoch=epoch, message=reason))
    return ids


def lagging(engine: Engine, claims: Sequence[Claim], epoch: int) -> bool:
    """Whether a config of the pruning sweeps of CLAIMS that is not in CLAIMS has a run training on
    another worker that has not recorded EPOCH yet, while EPOCH is one the rule judges: then the
    pack waits for it (configs are judged at the same epoch). Queued runs are not waited for."""
    ours = {c.config_id for c in claims}
    with read_session(engine) as s:
        sweeps = s.execute(select(Sweep).where(Sweep.id.in_(sorted({c.sweep_id for c in claims})))).scalars().all()
        for sweep in sweeps:
            spec = spec_of(sweep)
            if spec is None or spec.prune is None or not spec.prune.min_epochs <= epoch < spec.max_epochs():
                continue
            behind = s.scalar(select(Run.id).where(Run.sweep_id == sweep.id, Run.status == RUNNING,
                                                   Run.last_epoch < epoch, Run.config_id.not_in(ours)).limit(1))
            if behind is not None:
                return True
    return False


def after_epoch(engine: Engine, claims: Sequence[Claim], epoch: int) -> set[int]:
    """After a pack recorded EPOCH: judge at EPOCH the configs of each pruning sweep among CLAIMS
    (a pack may hold runs of several configs and sweeps) and prune those that cannot win, in one
    transaction under each sweep's lock, fenced by the pack's lease: a sweep is judged only while a
    run of it in CLAIMS is held. Answers the run ids of CLAIMS that are pruned now (by this call or
    an earlier one)."""
    if not claims:
        return set()
    from app.services.planner import sweep_lock

    ids = [c.run_id for c in claims]
    token = claims[0].token
    with write_session(engine) as s:
        held = set(s.scalars(select(Run.sweep_id).where(Run.id.in_(ids), Run.lease_token == token,
                                                        Run.status == RUNNING).distinct()))
        for sweep_id in sorted(held):
            sweep = sweep_lock(s, sweep_id)
            spec = spec_of(sweep) if sweep is not None else None
            if spec is not None:
                for config_id, reason in decide(s, sweep_id, spec, epoch).items():
                    prune_config(s, config_id, reason, epoch)
        return set(s.scalars(select(Run.id).where(Run.id.in_(ids), Run.lease_token == token,
                                                  Run.status == PRUNED)))


def prune_reasons(engine: Engine, sweep_id: int) -> dict[int, dict[str, Any]]:
    """Per pruned config of the sweep: the epoch and reason of its prune (its runs' event)."""
    with read_session(engine) as s:
        rows = s.execute(select(Run.config_id, RunEvent.epoch, RunEvent.message)
                         .join(RunEvent, and_(RunEvent.run_id == Run.id, RunEvent.kind == PRUNED))
                         .where(Run.sweep_id == sweep_id, Run.status == PRUNED)
                         .order_by(RunEvent.id)).all()
    out: dict[int, dict[str, Any]] = {}
    for config_id, epoch, message in rows:
        out.setdefault(config_id, {"epoch": epoch, "text": message})
    return out
