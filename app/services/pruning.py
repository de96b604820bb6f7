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

Where each part lives (this module holds the worker's hooks and re-exports the rest, the names every
caller imports from here):
- app.services.pruning_rule: a sweep's rule (`PruneRule`, `rule_of`);
- app.services.pruning_ci: the ci rule (`bounds`, `ci_decisions`);
- app.services.pruning_optuna: the median and asha rules (`optuna_decisions`);
- app.services.pruning_judge: a sweep judged at an epoch from the database (`decide`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, select, update
from sqlalchemy.orm import Session

from app.db import db_now, read_session, write_session
from app.models import Run, RunEvent, Sweep, SweepKind
from app.services.pruning_ci import Bounds, bounds, ci_decisions
from app.services.pruning_judge import FINAL, PRUNED, QUEUED, RUNNING, SweepRuns, decide, sweep_runs
from app.services.pruning_optuna import ASHA_REDUCTION, optuna_decisions
from app.services.pruning_rule import PruneRule, rule_of
from app.services.queue import Claim
from app.services.stored_spec import prunes, stored_spec
from app.spec import SweepSpec

__all__ = [
    "ASHA_REDUCTION",
    "FINAL",
    "PRUNED",
    "QUEUED",
    "RUNNING",
    "Bounds",
    "PruneRule",
    "SweepRuns",
    "after_epoch",
    "bounds",
    "ci_decisions",
    "decide",
    "lagging",
    "optuna_decisions",
    "prune_config",
    "prune_reasons",
    "pruning_sweeps",
    "rule_of",
    "spec_of",
    "sweep_runs",
]


def spec_of(sweep: Sweep) -> SweepSpec | None:
    """A queued sweep's spec if it prunes (app.services.stored_spec)."""
    return stored_spec(sweep, prunes)


def pruning_sweeps(engine: Engine, sweep_ids: Sequence[int]) -> set[int]:
    """Which of SWEEP_IDS have a prune block (a worker asks once per pack)."""
    with read_session(engine) as s:
        rows = s.execute(select(Sweep.id, Sweep.spec).where(Sweep.id.in_(sorted(set(sweep_ids))),
                                                            Sweep.kind == SweepKind.QUEUED.value)).all()
    return {i for i, spec in rows if isinstance(spec, dict) and spec.get("prune")}


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
