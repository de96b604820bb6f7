"""Adaptive seeds (a race): every config starts with `min` seeds; after each round the configs that
are settled worse than another stop, the others get `step` more seeds, until one is left or every
config has `max`.

The method: group-sequential Bonferroni with O'Brien-Fleming-type alpha spending.
- The looks are fixed by the spec: look k uses the first n_k seeds of each config (n_1 = min,
  n_{k+1} = n_k + step, the last n_K = max), so there are K = ceil((max - min) / step) + 1 looks,
  and the information at look k is t_k = n_k / max.
- The error rate alpha is spent across the looks by the Lan-DeMets O'Brien-Fleming-type spending
  function a(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)): look k may spend a_k = a(t_k) - a(t_{k-1})
  (little at the first looks, most at the last; a(1) = alpha).
- Within a look, every pair of configs is a hypothesis (the best is picked from the data, so any
  pair could be the one compared): a config is settled at look k when, for some config j still in
  the race, Welch's two-sided p (app.services.stats.welch's test: scipy's ttest_ind, equal_var=False)
  on their first n_k finals is at most a_k / M with j ahead, M = k(k-1)/2 pairs of the sweep's
  configs (a search's: of max_configs). Written as an adjusted p: min(1, p * M * alpha / a_k),
  settled when it is at most alpha.
- The guarantee: every test at look k uses exactly the first n_k seeds of both configs, whatever
  happened before, so the chance of settling any config that is in truth not worse is at most
  sum_k M * (a_k / M) = alpha (Bonferroni over looks and pairs; Welch's test taken as exact),
  whatever configs are in the race, however many stop early, and when configs join late (a search).
  tests/unit/test_racing_simulation.py measures it: 2,000 races of equal configs.
- Plain Holm at the final data (the verdicts route for an unraced sweep) would look at data whose
  amount the race chose, and its error rate would not hold; the verdicts of a raced sweep on the
  race's metric are the race's (`overlay`).

`replay` is the pure core, batched over races (numpy arrays), so the simulations run the very code
the planner runs: the race's state is recomputed from the finals every time (nothing is stored), so
any number of planners agree and a planner killed mid-way leaves nothing half-decided.

Where each part lives (this module re-exports them all, the names every caller imports from here):
- app.services.racing_plan: the looks and the spending (`RacePlan`, `plan_for`);
- app.services.racing_replay: the pure core (`replay`, `RaceState`, `welch_p`);
- app.services.racing_sweep: a sweep's race from the database (`Race`, `race_of`, `next_seeds`, `read_race`);
- app.services.racing_words: each config's state and sentence, the method in words (`config_states`);
- app.services.racing_verdicts: the verdicts of a raced sweep (`overlay`, `raced_verdicts`).
"""

from __future__ import annotations

from app.services.racing_plan import RacePlan, look_sizes, obf_spent, pair_count, plan_for
from app.services.racing_replay import MAX_RIVALS, RaceState, replay, welch_p
from app.services.racing_sweep import (
    FINAL_STATUSES,
    PRUNED,
    ConfigSeeds,
    Race,
    arrays,
    next_seeds,
    race_inputs,
    race_of,
    read_race,
    spec_of,
)
from app.services.racing_verdicts import overlay, raced_verdicts
from app.services.racing_words import METHOD_NAME, ConfigState, config_states, method_text

__all__ = [
    "FINAL_STATUSES",
    "MAX_RIVALS",
    "METHOD_NAME",
    "PRUNED",
    "ConfigSeeds",
    "ConfigState",
    "Race",
    "RacePlan",
    "RaceState",
    "arrays",
    "config_states",
    "look_sizes",
    "method_text",
    "next_seeds",
    "obf_spent",
    "overlay",
    "pair_count",
    "plan_for",
    "race_inputs",
    "race_of",
    "raced_verdicts",
    "read_race",
    "replay",
    "spec_of",
    "welch_p",
]
