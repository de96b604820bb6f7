"""The race's sequential rule (app.services.racing) keeps its error rate and saves seeds: simulated
races run through the very `replay` the planner runs, batched over 2,000 races with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from app.services import stats
from app.services.racing import RacePlan, look_sizes, obf_spent, pair_count, replay, welch_p

RACES = 2000
ALPHA = 0.05
SE = math.sqrt(ALPHA * (1 - ALPHA) / RACES)  # the simulation error of a rate near alpha


def simulate(k: int, low: int, high: int, step: int, shift: list[float] | None = None, seed: int = 0,
             plan: RacePlan | None = None) -> tuple[np.ndarray, np.ndarray, RacePlan]:
    """RACES races of K configs whose seeds' finals are N(shift_j, 1): (settled (R, k), seeds (R, k), plan)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(RACES, k, high)) + np.asarray(shift or [0.0] * k)[None, :, None]
    plan = plan or RacePlan(look_sizes(low, high, step), ALPHA, pair_count(k))
    state = replay(values, np.ones(values.shape, bool), np.zeros((RACES, k), bool), plan)
    assert state.done.all()
    return state.settled, state.seeds, plan


@pytest.mark.parametrize(("k", "low", "high", "step"), [(3, 3, 9, 3), (4, 3, 12, 3), (2, 2, 20, 2)])
def test_false_alarms_with_equal_configs_stay_at_or_below_alpha(k: int, low: int, high: int, step: int) -> None:
    settled, seeds, plan = simulate(k, low, high, step, seed=k)
    rate = settled.any(axis=1).mean()
    assert rate <= ALPHA + 2.5 * SE, rate
    calm = ~settled.any(axis=1)
    assert (seeds[calm] == high).all()  # a race that settles nothing gives every config its max seeds
    # The simulation can see an inflated rate: plain tests at alpha at every look (no spending, one
    # comparison per config) declare a config worse far more often than alpha.
    naive = RacePlan(plan.sizes, ALPHA, k - 1, levels=(ALPHA,) * plan.looks)
    naive_rate = simulate(k, low, high, step, seed=k, plan=naive)[0].any(axis=1).mean()
    assert naive_rate > ALPHA + 4 * SE, naive_rate


def fixed_design_power(n: int, d: float, alpha: float, seed: int) -> float:
    """The power of one Welch test at ALPHA on n vs n seeds, difference D sds (scipy, simulated)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(4 * RACES, n)), rng.normal(size=(4 * RACES, n)) - d
    result = scipy_stats.ttest_ind(b, a, axis=1, equal_var=False)
    return float(np.mean((result.pvalue <= alpha) & (result.statistic < 0)))


def test_one_config_worse_by_one_sd_is_found_with_fewer_seeds_than_the_fixed_design_of_equal_power() -> None:
    settled, seeds, _ = simulate(2, 3, 30, 3, shift=[0.0, -1.0], seed=11)
    power = settled[:, 1].mean()
    assert settled[:, 0].mean() < 0.002  # the better config is (all but) never settled
    race_total = seeds.sum(axis=1).mean()
    # The fixed design: every config gets n seeds, one test at alpha (one pair), n the least with the race's power.
    n_fixed = next(n for n in range(2, 200) if fixed_design_power(n, 1.0, ALPHA, seed=n) >= power)
    from statsmodels.stats.power import TTestIndPower  # an independent check of n (pooled t, analytic)

    analytic = TTestIndPower().solve_power(effect_size=1.0, alpha=ALPHA, power=power)
    assert abs(n_fixed - analytic) <= 2, (n_fixed, analytic)
    assert 0.85 < power < 0.97, power
    assert race_total < 0.92 * 2 * n_fixed, (race_total, n_fixed, power)


def test_spending_is_obrien_fleming_type_and_spends_alpha_in_all() -> None:
    # Lan-DeMets' O'Brien-Fleming-type function at t = 0.5, alpha = 0.05: 2 - 2 Phi(2.772) = 0.00557.
    assert obf_spent(0.5, 0.05) == pytest.approx(2 - 2 * scipy_stats.norm.cdf(1.959964 / math.sqrt(0.5)), rel=1e-6)
    assert obf_spent(0.5, 0.05) == pytest.approx(0.00557, abs=1e-5)
    plan = RacePlan(look_sizes(3, 10, 3), 0.05, 3)
    assert plan.sizes == (3, 6, 9, 10) and len(plan.sizes) == math.ceil((10 - 3) / 3) + 1
    assert sum(plan.levels) == pytest.approx(0.05)
    assert all(a > 0 for a in plan.levels) and plan.levels[0] < plan.levels[1]
    assert plan.threshold(1) == pytest.approx(plan.levels[1] / 3)
    assert plan.adjusted(np.array([plan.threshold(1)]), 1)[0] == pytest.approx(0.05)


def test_welch_p_is_the_verdicts_test() -> None:
    rng = np.random.default_rng(3)
    for n_a, n_b in [(2, 2), (3, 7), (9, 4)]:
        a, b = rng.normal(size=n_a), rng.normal(size=n_b) + 0.5
        width = max(n_a, n_b)
        padded_a = np.concatenate([a, np.full(width - n_a, np.nan)])
        padded_b = np.concatenate([b, np.full(width - n_b, np.nan)])
        diff, p = welch_p(padded_a, padded_b)
        expected = stats.welch(list(a), list(b))
        assert float(diff) == pytest.approx(expected.diff) and float(p) == pytest.approx(expected.p)
    # no spread in either: exact, as the verdicts say (p 0 when the means differ, 1 when equal)
    assert float(welch_p(np.array([1.0, 1.0]), np.array([2.0, 2.0]))[1]) == 0.0
    assert float(welch_p(np.array([1.0, 1.0]), np.array([1.0, 1.0]))[1]) == 1.0
    assert math.isnan(float(welch_p(np.array([1.0, np.nan]), np.array([1.0, 2.0]))[1]))


def test_a_look_waits_for_every_racing_config_and_settled_configs_stop() -> None:
    plan = RacePlan((2, 4, 6), 0.05, 1, levels=(0.02, 0.02, 0.01))
    values = np.full((1, 2, 6), np.nan)
    values[0, 0, :4] = [10.0, 12.0, 11.0, 11.0]
    values[0, 1, :4] = [2.0, 8.0, 2.0, 2.0]  # p = 0.35 on 2 seeds each, 0.012 on 4
    ended = np.zeros((1, 2, 6), bool)
    ended[0, :, :2] = True
    state = replay(values, ended, np.zeros((1, 2), bool), plan)
    first_p = float(welch_p(values[0, 0, :2], values[0, 1, :2])[1])
    assert first_p > 0.02  # two seeds each do not settle it at this spend
    assert state.looks_done[0] == 1 and not state.done[0] and state.settled_look[0, 1] == -1
    assert float(state.p[0, 1]) == pytest.approx(first_p)
    ended[0, 0, 2:4] = True  # one config's next round ended, the other's not: the look waits
    assert replay(values, ended, np.zeros((1, 2), bool), plan).looks_done[0] == 1
    ended[0, 1, 2:4] = True
    state = replay(values, ended, np.zeros((1, 2), bool), plan)
    assert state.looks_done[0] == 2 and state.done[0] and state.settled_look[0, 1] == 1
    assert state.rival[0, 1] == 0 and state.best[0] == 0 and state.seeds[0].tolist() == [4, 4]
    # a pruned config is out: its rival races alone, and the race is over at once
    alone = replay(values, ended, np.array([[False, True]]), plan)
    assert alone.done[0] and alone.looks_done[0] == 1 and not alone.settled.any()
