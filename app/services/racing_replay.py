"""The pure core of a race (app.services.racing): `replay` recomputes R races from their seeds'
finals (numpy arrays, batched over races), so the simulations (tests/unit/test_racing_simulation.py)
run the very code the planner runs, and nothing a race decides is ever stored."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from app.services.racing_plan import RacePlan

MAX_RIVALS = 20  # a config is tested against the best this many configs still in the race


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
