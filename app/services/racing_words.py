"""A race in words (app.services.racing): each config's state (best, settled, racing, unsettled,
pruned) with its sentence, and the method as the decisions and verdicts pages show it."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from app.models import RunStatus
from app.services.racing_plan import RacePlan
from app.services.racing_sweep import Race

METHOD_NAME = "group-sequential Bonferroni with O'Brien-Fleming-type (Lan-DeMets) alpha spending"


class ConfigState(enum.StrEnum):
    """A config's state in GET /api/sweeps/{id}/decisions (a config's, not a run's status): the race's
    (best, settled, racing, unsettled), pruned, or, outside a race, where its runs are."""

    BEST = "best"
    SETTLED = "settled"
    RACING = "racing"
    UNSETTLED = "unsettled"
    PRUNED = RunStatus.PRUNED.value  # its runs were pruned (by the pruner; the race gives them no more seeds)
    TRAINING = "training"  # no race: some run is queued or running
    DONE = "done"  # no race: every run ended, none pruned


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def _p(p: float) -> str:
    from app.services.stats import p_in_words

    return f"adjusted {p_in_words(p)}"


def config_states(race: Race) -> list[dict[str, Any]]:
    """Per config: its state in the race (best, settled, racing, unsettled, pruned) and a sentence."""
    st, plan = race.state, race.plan
    labels = [c.label for c in race.configs]
    done, best = bool(st.done[0]), int(st.best[0])
    out = []
    for j, c in enumerate(race.configs):
        seeds = int(st.seeds[0, j])
        p = float(st.p[0, j]) if np.isfinite(st.p[0, j]) else None
        adjusted = float(st.adjusted[0, j]) if np.isfinite(st.adjusted[0, j]) else None
        row: dict[str, Any] = {"config_id": c.config_id, "label": c.label, "seeds": seeds,
                               "runs": len(c.runs), "p": p, "p_adjusted": adjusted, "look": None, "rival": None}
        if c.pruned:
            row.update(state=ConfigState.PRUNED, text="pruned: out of the race (see its runs' reason)")
        elif st.settled[0, j]:
            rival = int(st.rival[0, j])
            whom = "the best" if rival == best else labels[rival]
            row.update(state=ConfigState.SETTLED, look=int(st.settled_look[0, j]) + 1,
                       rival=race.configs[rival].config_id,
                       text=f"settled after {_seeds(seeds)}: worse than {whom}"
                            + (f" ({labels[rival]})" if rival == best else "") + f", {_p(adjusted or 1.0)}")
        elif done and j == best:
            row.update(state=ConfigState.BEST, text=f"the best after {_seeds(seeds)}" +
                       ("; every other config is settled worse" if all(
                           st.settled[0, i] or race.configs[i].pruned for i in range(len(labels)) if i != j) else ""))
        elif done:
            tail = f", {_p(adjusted)}" if adjusted is not None else ""
            row.update(state=ConfigState.UNSETTLED,
                       text=f"not settled after {_seeds(seeds)} (the most the race gives): "
                            f"indistinguishable from the best{tail}")
        else:
            look = int(st.looks_done[0])
            nxt = plan.sizes[look] if look < plan.looks else plan.sizes[-1]
            row.update(state=ConfigState.RACING,
                       text=f"racing: {_seeds(len(c.runs))} so far, decided again at {_seeds(nxt)}"
                            + (f" (now {_p(adjusted)})" if adjusted is not None else ""))
        out.append(row)
    return out


def method_text(plan: RacePlan, metric: str) -> str:
    sizes = ", ".join(map(str, plan.sizes))
    levels = ", ".join(f"{a:.2g}" for a in plan.levels)
    return (
        f"Adaptive seeds, raced on the final {metric} ({METHOD_NAME}): the looks are at {sizes} seeds per config"
        f" (look k uses each config's first n_k seeds); the family error rate alpha = {plan.alpha:g} is spent"
        f" across the {plan.looks} looks by the O'Brien-Fleming-type function 2 - 2 Phi(z_(1-alpha/2) / sqrt(t)),"
        f" t = n_k / {plan.sizes[-1]}, so the looks may spend {levels}. Within a look every pair of configs counts"
        f" ({plan.pairs} pairs: the best is chosen from the data, so any pair could be the one compared): a config"
        f" is settled worse when Welch's two-sided p against a config still racing and ahead of it, times"
        f" {plan.pairs} (Bonferroni) times alpha over the look's spend, is at most alpha (the adjusted p shown)."
        f" Settled configs get no more seeds; the others get the next look's, until one is left or the last look"
        f" is taken. Every test uses a fixed number of seeds, so the chance of settling any config that is not"
        f" in truth worse stays at or below alpha over all looks together (a union bound). Plain Holm on the"
        f" final data, which the race's stopping chose, would not keep that rate: the verdicts of a raced sweep"
        f" on {metric} are the race's."
    )
