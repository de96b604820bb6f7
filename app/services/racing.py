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
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.db import read_session
from app.metrics import describe
from app.models import Config, Run, RunStatus, Sweep
from app.services.finals import final_rows_query
from app.spec import SweepSpec

METHOD_NAME = "group-sequential Bonferroni with O'Brien-Fleming-type (Lan-DeMets) alpha spending"
MAX_RIVALS = 20  # a config is tested against the best this many configs still in the race
FINAL_STATUSES = frozenset(s.value for s in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED,
                                             RunStatus.PRUNED))
PRUNED = RunStatus.PRUNED.value


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


# ---- the plan of looks and the spending ----------------------------------------------------

def obf_spent(t: float, alpha: float) -> float:
    """The alpha spent by information fraction T (0 < t <= 1): Lan-DeMets' O'Brien-Fleming-type
    function 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))."""
    from scipy import stats as scipy_stats

    if t >= 1:
        return alpha
    z = float(scipy_stats.norm.isf(alpha / 2))
    return float(2 * scipy_stats.norm.sf(z / math.sqrt(t)))


def look_sizes(low: int, high: int, step: int) -> tuple[int, ...]:
    """The seeds per config at each look: low, low + step, ..., and high last."""
    sizes = list(range(low, high + 1, step))
    if sizes[-1] != high:
        sizes.append(high)
    return tuple(sizes)


@dataclass(frozen=True)
class RacePlan:
    """The looks of a race and what each may spend. LEVELS (the alpha each look may spend, summing
    to at most ALPHA) default to the O'Brien-Fleming-type spending of ALPHA over SIZES; PAIRS is the
    Bonferroni family within a look."""

    sizes: tuple[int, ...]
    alpha: float
    pairs: int
    higher_is_better: bool = True
    levels: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.levels:
            spent = [obf_spent(n / self.sizes[-1], self.alpha) for n in self.sizes]
            object.__setattr__(self, "levels", tuple(b - a for a, b in zip([0.0, *spent], spent, strict=False)))

    @property
    def looks(self) -> int:
        return len(self.sizes)

    def threshold(self, look: int) -> float:
        """The largest raw p that settles a pair at LOOK (0-based): a_k / M."""
        return self.levels[look] / max(1, self.pairs)

    def adjusted(self, p: np.ndarray, look: int) -> np.ndarray:
        """Raw P at LOOK as an adjusted p on alpha's scale: min(1, p M alpha / a_k)."""
        level = self.levels[look]
        if level <= 0:
            return np.ones_like(p)
        return np.minimum(1.0, p * max(1, self.pairs) * self.alpha / level)


def pair_count(configs: int) -> int:
    return configs * (configs - 1) // 2


def plan_for(spec: SweepSpec, config_count: int) -> RacePlan | None:
    """The race's plan for a sweep of SPEC with CONFIG_COUNT configs now (None: no race). A search's
    family is every config it may try (max_configs)."""
    from app.adaptive_spec import AdaptiveReplicates

    if spec.race is None or not isinstance(spec.replicates, AdaptiveReplicates):
        return None
    reps = spec.replicates
    family = max(config_count, spec.max_configs or 0) if spec.searching else config_count
    higher = describe(spec.race.metric).higher_is_better
    return RacePlan(look_sizes(reps.min, reps.max, reps.step), spec.race.alpha, pair_count(max(2, family)),
                    higher is not False)


# ---- the pure core --------------------------------------------------------------------------

def welch_p(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of B minus mean of A and Welch's two-sided p along the last axis, batched over the
    others (NaN: no value). The test is app.services.stats.welch's, Welch's unequal-variances t-test,
    here from each group's mean, sd and count (scipy's ttest_ind_from_stats, equal_var=False; the
    tests compare the two); as in app.services.verdicts, with no spread in either group the
    difference is exact and p is 0 (means differ) or 1 (equal). Fewer than 2 values in either: NaN."""
    from scipy import stats as scipy_stats

    a, b = np.broadcast_arrays(a, b)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ca, cb = np.sum(np.isfinite(a), -1), np.sum(np.isfinite(b), -1)
        ma, mb = np.nanmean(a, -1), np.nanmean(b, -1)
        sa, sb = np.nanstd(a, -1, ddof=1), np.nanstd(b, -1, ddof=1)
        p = np.asarray(scipy_stats.ttest_ind_from_stats(mb, sb, cb, ma, sa, ca, equal_var=False).pvalue, float)
    diff = mb - ma
    enough = (ca >= 2) & (cb >= 2)
    flat = enough & (sa == 0) & (sb == 0)
    p = np.where(flat, np.where(diff != 0, 0.0, 1.0), p)
    return diff, np.where(enough, p, np.nan)


@dataclass
class RaceState:
    """Where each of R races stands, per config (arrays of shape (R, k) unless said)."""

    settled_look: np.ndarray  # the look (0-based) it was settled at, -1 while it races
    rival: np.ndarray  # the config it was settled against (-1: none)
    p: np.ndarray  # raw p of its last test (against its strongest rival), NaN if none
    adjusted: np.ndarray  # that p adjusted (RacePlan.adjusted), NaN if none
    seeds: np.ndarray  # the seeds the race has used of it so far (its look's n)
    looks_done: np.ndarray  # (R,) looks completed
    done: np.ndarray  # (R,) the race is over: one config left, or the last look taken
    best: np.ndarray  # (R,) the best config still racing at the last look taken (-1: none yet)

    @property
    def settled(self) -> np.ndarray:
        return self.settled_look >= 0


def replay(values: np.ndarray, ended: np.ndarray, out: np.ndarray, plan: RacePlan) -> RaceState:
    """Run R races from their seeds' finals. VALUES (R, k, N): config j's final of its i-th seed (by
    seed order; NaN when it has none: failed, or no such run yet); ENDED (R, k, N): whether that
    seed's run has ended (False when it is queued, running or not made yet); OUT (R, k): configs
    out of the race (pruned). A look is taken when every config still racing has its first n_k
    runs ended; a race stops at the first look it cannot take (its next seeds are not done)."""
    r, k, _ = values.shape
    sign = 1.0 if plan.higher_is_better else -1.0
    st = RaceState(np.full((r, k), -1), np.full((r, k), -1), np.full((r, k), np.nan), np.full((r, k), np.nan),
                   np.zeros((r, k), int), np.zeros(r, int), np.zeros(r, bool), np.full(r, -1))
    stuck = np.zeros(r, bool)
    for look, n in enumerate(plan.sizes):
        racing = ~st.settled & ~out  # (R, k)
        if n > values.shape[2]:
            break
        complete = ended[:, :, :n].all(-1)
        ready = ~st.done & ~stuck & np.all(complete | ~racing, axis=1)
        stuck |= ~ready & ~st.done
        if not ready.any():
            break
        data = values[:, :, :n]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            score = sign * np.nanmean(data, -1)  # higher is ahead
        counts = np.isfinite(data).sum(-1)
        rankable = racing & (counts >= 2) & np.isfinite(score)
        ranked = np.where(rankable, score, -np.inf)
        rivals = np.argsort(-ranked, axis=1, kind="stable")[:, :min(MAX_RIVALS, k)]  # (R, m)
        rival_ok = np.take_along_axis(rankable, rivals, 1)
        rival_data = np.take_along_axis(data, rivals[:, :, None], 1)  # (R, m, n)
        diff, p = welch_p(rival_data[:, None, :, :], data[:, :, None, :])  # config minus rival: (R, k, m)
        ahead = (sign * diff < 0) & rival_ok[:, None, :] & (rivals[:, None, :] != np.arange(k)[None, :, None])
        p = np.where(ahead & np.isfinite(p), p, np.inf)
        strongest = np.argmin(p, axis=2)  # (R, k)
        p_min = np.take_along_axis(p, strongest[:, :, None], 2)[:, :, 0]
        tested = ready[:, None] & racing & np.isfinite(p_min)
        adjusted = plan.adjusted(np.where(np.isfinite(p_min), p_min, 1.0), look)
        st.p = np.where(tested, p_min, np.where(ready[:, None] & racing, np.nan, st.p))
        st.adjusted = np.where(tested, adjusted, np.where(ready[:, None] & racing, np.nan, st.adjusted))
        now = tested & (p_min <= plan.threshold(look))
        st.settled_look = np.where(now, look, st.settled_look)
        st.rival = np.where(now, np.take_along_axis(rivals, strongest, 1), st.rival)
        st.seeds = np.where(ready[:, None] & racing, n, st.seeds)
        st.looks_done = np.where(ready, look + 1, st.looks_done)
        left = (~st.settled & ~out).sum(1)
        leader = np.where(~st.settled & rankable, score, -np.inf)
        st.best = np.where(ready, np.where(np.isfinite(leader.max(1)), leader.argmax(1), -1), st.best)
        st.done |= ready & ((left <= 1) | (look == plan.looks - 1))
    return st


# ---- from the database ----------------------------------------------------------------------

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


# ---- in words -------------------------------------------------------------------------------

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


def overlay(answer: dict[str, Any], race: Race) -> dict[str, Any]:
    """The verdicts answer (app.services.verdicts) of a raced sweep on the race's metric, its
    verdicts the race's: a config the race settled is worse, one it did not settle is
    indistinguishable; each comparison gains `race` (state, sentence, adjusted p) and the answer a
    `race` block; numbers (difference, CI, p, p_holm) stay those of the final data."""
    states = {row["config_id"]: row for row in config_states(race)}
    best = answer.get("best") or {}
    best_state = states.get(best.get("config_id"))
    if best_state is not None and best_state["state"] in (ConfigState.SETTLED, ConfigState.PRUNED):
        answer["race"] = {"method": method_text(race.plan, race.metric), "applied": False,
                          "why": "the best config of the final data is one the race settled or pruned"}
        return answer
    for c in answer.get("comparisons", []):
        row = states.get(c["config_id"])
        if row is None:
            continue
        c["race"] = {k: row[k] for k in ("state", "text", "seeds", "p_adjusted", "look")}
        if c["verdict"] == "too_few":
            continue
        if row["state"] == ConfigState.SETTLED:
            c["verdict"] = "worse" if answer.get("higher_is_better") is not None else (
                "lower" if race.plan.higher_is_better else "higher")
        elif row["state"] in (ConfigState.UNSETTLED, ConfigState.RACING):
            c["verdict"] = "indistinguishable"
        c["text"] = f"{c['label']}: {row['text']} (race); final data: {c['text']}"
    answer["race"] = {"method": method_text(race.plan, race.metric), "applied": True,
                      "done": bool(race.state.done[0]), "looks_done": int(race.state.looks_done[0]),
                      "sizes": list(race.plan.sizes), "levels": list(race.plan.levels), "pairs": race.plan.pairs,
                      "alpha": race.plan.alpha}
    answer["method"] = method_text(race.plan, race.metric) + " " + answer.get("method", "")
    return answer


def raced_verdicts(engine: Engine, sweep: Sweep, metric: str, answer: dict[str, Any]) -> dict[str, Any]:
    """ANSWER (app.services.verdicts' for SWEEP) with the race's verdicts when SWEEP races on METRIC
    (`overlay`, on a copy: ANSWER may be a cached one); unchanged otherwise."""
    import copy

    spec = spec_of(sweep)
    if spec is None or spec.race is None or spec.race.metric != metric:
        return answer
    race = read_race(engine, sweep.id)
    if race is None:
        return answer
    return overlay(copy.deepcopy(answer), race)
