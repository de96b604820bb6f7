"""The prune rules (app.services.pruning) against their definitions computed here by hand."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from app.services.pruning import PruneRule, bounds, ci_decisions, optuna_decisions

LABELS = {1: "w2", 2: "w64", 3: "w8"}


def rule(method: str = "ci", configs: int = 2, epochs: int = 10, min_epochs: int = 2, higher: bool = True) -> PruneRule:
    return PruneRule(method, "val_accuracy", min_epochs, 0.05, configs, epochs, higher)


def test_ci_bounds_are_one_sided_t_bounds_at_alpha_over_2_c_l() -> None:
    r = rule()
    assert r.looks == 8 and r.level == pytest.approx(0.05 / (2 * 2 * 8))
    xs = [0.294, 0.304, 0.344, 0.294]
    b = bounds(xs, r.level)
    assert b is not None
    half = scipy_stats.t.ppf(1 - 0.05 / 32, 3) * statistics.stdev(xs) / math.sqrt(4)
    assert b.mean == pytest.approx(statistics.fmean(xs))
    assert (b.low, b.high) == pytest.approx((b.mean - half, b.mean + half))
    assert bounds([0.5], r.level) is None and bounds([0.5, float("nan")], r.level) is None


def test_ci_prunes_a_config_whose_upper_bound_is_below_the_best_lower_bound() -> None:
    # epoch 2 of MNIST subsets with 4 seeds: width 2 against width 64 (measured on this machine)
    values = {1: [0.294, 0.304, 0.344, 0.294], 2: [0.882, 0.884, 0.892, 0.886]}
    out = ci_decisions(values, [1, 2], rule(), 2, LABELS)
    assert list(out) == [1]
    narrow, wide = bounds(values[1], rule().level), bounds(values[2], rule().level)
    assert narrow is not None and wide is not None and narrow.high < wide.low
    assert out[1].startswith(f"pruned at epoch 2: upper bound {narrow.high:.3g} below the best's lower bound "
                             f"{wide.low:.3g}")
    assert "w64" in out[1] and "4 vs 4 seeds" in out[1]


def test_ci_keeps_configs_whose_bounds_overlap_and_needs_two_of_each() -> None:
    values = {1: [0.80, 0.86, 0.83], 2: [0.88, 0.90, 0.86]}  # means differ by 5 points; bounds overlap
    b1, b2 = bounds(values[1], rule().level), bounds(values[2], rule().level)
    assert b1 is not None and b2 is not None and b1.high >= b2.low
    assert ci_decisions(values, [1, 2], rule(), 3, LABELS) == {}
    assert ci_decisions({1: [0.1], 2: [0.9, 0.91]}, [1], rule(), 3, LABELS) == {}  # one replicate: no bound
    # the best is never pruned; a config not among the candidates (all its runs ended) is left alone
    far = {1: [0.1, 0.11, 0.12], 2: [0.9, 0.91, 0.9]}
    assert ci_decisions(far, [2], rule(), 3, LABELS) == {}
    assert list(ci_decisions(far, [1, 2], rule(), 3, LABELS)) == [1]


def test_ci_for_a_metric_where_lower_is_better() -> None:
    values = {1: [2.1, 2.2, 2.0], 2: [0.30, 0.31, 0.29]}
    out = ci_decisions(values, [1, 2], rule(higher=False), 3, LABELS)
    assert list(out) == [1] and "lower bound" in out[1] and "above the best's upper bound" in out[1]


def test_a_stricter_family_prunes_less() -> None:
    values = {1: [0.70, 0.71, 0.72], 2: [0.80, 0.81, 0.82]}
    assert list(ci_decisions(values, [1], rule(configs=2, epochs=3), 2, LABELS)) == [1]  # level 0.05 / 4
    assert ci_decisions(values, [1], rule(configs=50, epochs=100), 2, LABELS) == {}  # level 0.05 / 9800


def test_median_prunes_below_the_median_of_the_others_at_that_epoch() -> None:
    curves = {1: {1: 0.3, 2: 0.35}, 2: {1: 0.8, 2: 0.85}, 3: {1: 0.5, 2: 0.6}}
    complete = {c: {1, 2} for c in curves}
    r = rule("median", configs=3)
    out = optuna_decisions(curves, complete, [1, 2, 3], set(), r, 2)
    # by hand: a config's best so far against the median of the other two at epoch 2
    expected = {c for c in curves if max(curves[c].values()) < statistics.median(
        [curves[o][2] for o in curves if o != c])}
    assert set(out) == expected == {1}
    assert "median of the other configs' means, 0.725" in out[1]
    assert optuna_decisions(curves, complete, [1], set(), r, 1) == {}  # before n_warmup_steps = min_epochs
    # the others count only at an epoch their data are complete
    assert optuna_decisions(curves, {1: {1, 2}, 2: {1}, 3: {1}}, [1], set(), r, 2) == {}


def test_asha_keeps_the_top_third_at_each_rung() -> None:
    # rungs at epochs 2 and 6 (min_epochs 2, reduction factor 3); six configs at rung 0
    means = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5, 6: 0.6}
    curves = {c: {1: m - 0.05, 2: m} for c, m in means.items()}
    complete = {c: {1, 2} for c in curves}
    r = rule("asha", configs=6, epochs=20)
    out = optuna_decisions(curves, complete, list(curves), set(), r, 2)
    # by hand: 6 // 3 = 2 go on, those at or above the second largest mean
    assert set(out) == {c for c, m in means.items() if m < sorted(means.values())[-2]} == {1, 2, 3, 4}
    assert "rung 0" in out[1]
    assert optuna_decisions(curves, complete, list(curves), set(), r, 3) == {}  # epoch 3 is no rung
