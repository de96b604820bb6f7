"""Judging a pruning sweep at an epoch (app.services.pruning): its runs as the rules see them, and
`decide`, which configs to prune, from data that no longer change (every run compared has recorded
the epoch or ended before it)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import statuses
from app.models import Config, Metric, Run, RunEvent, RunStatus
from app.services.pruning_ci import ci_decisions
from app.services.pruning_optuna import optuna_decisions
from app.services.pruning_rule import rule_of
from app.spec import SweepSpec

QUEUED, RUNNING, PRUNED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.PRUNED.value
FINAL = frozenset(s.value for s in statuses.FINAL)  # the catalogue's final statuses, as stored


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
