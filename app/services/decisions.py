"""What an adaptive sweep decided about each config and why (GET /api/sweeps/{id}/decisions): the
race's state (app.services.racing: racing, settled, best, unsettled) and the prunes
(app.services.pruning), each with its sentence, and the methods in words."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from app.db import read_session
from app.models import Config, Run, RunStatus
from app.services import pruning, racing
from app.services.stored_spec import races_or_prunes, stored_spec
from app.services.sweeps import get_sweep_row

LIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def prune_method(rule: pruning.PruneRule) -> str:
    if rule.method == "ci":
        side = "upper bound falls below the best config's lower bound" if rule.higher_is_better \
            else "lower bound rises above the best config's upper bound"
        return (f"Pruning (ci) on {rule.metric}: from epoch {rule.min_epochs} to {rule.epochs - 1}, at each epoch every"
                f" config's mean over its replicates gets one-sided t bounds (n - 1 degrees of freedom) at level"
                f" alpha / (2 C L) = {rule.alpha:g} / (2 x {rule.configs} configs x {rule.looks} epochs) ="
                f" {rule.level:.3g} each; a config whose {side} at the same epoch is pruned. If every bound holds"
                f" (chance at least 1 - {rule.alpha:g}, Bonferroni over all of them) no config whose true mean at that"
                f" epoch is at least the best's is pruned; it says nothing about later epochs. A config is judged at"
                f" an epoch once every run of it and of the configs it is compared with has recorded that epoch.")
    if rule.method == "median":
        return (f"Pruning (median) on {rule.metric}: Optuna's MedianPruner (n_startup_trials=0, n_warmup_steps="
                f"{rule.min_epochs}, n_min_trials=1) on config means: a config whose best mean so far is worse than"
                f" the median of the other configs' means at that epoch is pruned (the configs that recorded the"
                f" epoch, pruned ones too, count as Optuna's completed trials). No error rate: noisy metrics prune"
                f" good configs.")
    return (f"Pruning (asha) on {rule.metric}: Optuna's SuccessiveHalvingPruner (min_resource={rule.min_epochs},"
            f" reduction_factor={pruning.ASHA_REDUCTION}, min_early_stopping_rate=0) on config means: at epochs"
            f" {rule.min_epochs} x {pruning.ASHA_REDUCTION}^r a config goes on only if its mean is in the top"
            f" 1/{pruning.ASHA_REDUCTION} of the configs that reached that epoch. No error rate.")


def sweep_decisions(engine: Engine, sweep_id: int) -> dict[str, Any]:
    """Per config: state (racing, settled, best, unsettled, pruned, training, done) and a sentence;
    the race's and the prune's methods. A sweep with neither answers nulls and no configs."""
    sweep = get_sweep_row(engine, sweep_id)
    spec = stored_spec(sweep, races_or_prunes)
    answer: dict[str, Any] = {"sweep_id": sweep_id, "race": None, "prune": None, "configs": []}
    if spec is None:
        return answer
    with read_session(engine) as s:
        configs = s.execute(select(Config.id, Config.label).where(Config.sweep_id == sweep_id)
                            .order_by(Config.position)).all()
        live = dict(s.execute(select(Run.config_id, func.count()).where(Run.sweep_id == sweep_id,
                                                                         Run.status.in_(LIVE))
                              .group_by(Run.config_id)).all())
        runs = dict(s.execute(select(Run.config_id, func.count()).where(Run.sweep_id == sweep_id)
                              .group_by(Run.config_id)).all())
    reasons = pruning.prune_reasons(engine, sweep_id)
    race = racing.read_race(engine, sweep_id) if spec.race is not None else None
    by_race = {row["config_id"]: row for row in racing.config_states(race)} if race is not None else {}
    for c in configs:
        row: dict[str, Any] = by_race.get(c.id) or {"config_id": c.id, "label": c.label, "seeds": None,
                                                    "runs": int(runs.get(c.id, 0)), "p": None, "p_adjusted": None,
                                                    "look": None, "rival": None}
        row = {**row, "pruned_epoch": None}
        if c.id in reasons:
            row.update(state=racing.ConfigState.PRUNED, text=reasons[c.id]["text"], pruned_epoch=reasons[c.id]["epoch"])
        elif "state" not in row:
            row.update(state=racing.ConfigState.TRAINING if live.get(c.id) else racing.ConfigState.DONE,
                       text="in flight" if live.get(c.id) else "trained to its last epoch, not pruned")
        answer["configs"].append(row)
    if race is not None:
        answer["race"] = {"metric": race.metric, "alpha": race.plan.alpha, "sizes": list(race.plan.sizes),
                          "levels": list(race.plan.levels), "pairs": race.plan.pairs,
                          "looks_done": int(race.state.looks_done[0]), "done": bool(race.state.done[0]),
                          "method": racing.method_text(race.plan, race.metric), "name": racing.METHOD_NAME}
    rule = pruning.rule_of(spec, len(configs))
    if rule is not None:
        answer["prune"] = {"method": rule.method, "metric": rule.metric, "min_epochs": rule.min_epochs,
                           "alpha": rule.alpha, "configs": rule.configs, "looks": rule.looks,
                           "level": rule.level if rule.method == "ci" else None, "text": prune_method(rule),
                           racing.ConfigState.PRUNED.value: len(reasons)}  # how many configs
    return answer
