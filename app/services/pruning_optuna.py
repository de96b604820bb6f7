"""The median and asha prune rules (app.services.pruning), pure: Optuna's MedianPruner and
SuccessiveHalvingPruner on config means, each time on a study rebuilt in memory from the data given,
so the answer does not hang on which worker asks first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.services.pruning_rule import PruneRule

ASHA_REDUCTION = 3


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
