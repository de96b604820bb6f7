"""Statistics across replicates, checked against scipy and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from app.services.stats import describe_difference, epochs_to_fraction, p_in_words, summarize, welch


def test_summary_is_mean_sample_std_and_t_interval() -> None:
    xs = [0.91, 0.93, 0.92, 0.95, 0.90]
    s = summarize(xs)
    lo, hi = scipy_stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=scipy_stats.sem(xs))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(np.mean(xs)), pytest.approx(np.std(xs, ddof=1)))
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi))
    assert s.half_width == pytest.approx((hi - lo) / 2)


def test_summary_of_two_uses_the_wide_t_quantile() -> None:
    s = summarize([1.0, 3.0])
    assert s.half_width == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2))


@pytest.mark.parametrize("values, n, mean", [([], 0, None), ([0.5], 1, 0.5), ([None, float("nan"), 0.5], 1, 0.5)])
def test_summary_without_spread(values: list[float | None], n: int, mean: float | None) -> None:
    s = summarize(values)
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high, s.half_width) == (n, mean, None, None, None, None)


def test_welch_matches_scipy_including_its_interval() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.89, 0.01, 10), rng.normal(0.97, 0.004, 7)
    cmp = welch(a.tolist(), b.tolist())
    ref = scipy_stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert cmp.p == pytest.approx(ref.pvalue) and cmp.t == pytest.approx(ref.statistic)
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx((ci.low, ci.high))
    assert cmp.diff == pytest.approx(b.mean() - a.mean()) and cmp.df == pytest.approx(ref.df)
    assert (cmp.n_a, cmp.n_b, cmp.reason) == (10, 7, None)


def test_welch_needs_two_replicates_each() -> None:
    cmp = welch([0.9], [0.95, 0.96, 0.97])
    assert cmp.p is None and cmp.ci_low is None and cmp.diff == pytest.approx(0.06)
    assert "too few replicates" in (cmp.reason or "")


def test_welch_without_any_spread_has_no_test() -> None:
    cmp = welch([0.9, 0.9], [0.95, 0.95])
    assert cmp.p is None and cmp.diff == pytest.approx(0.05) and "no spread" in (cmp.reason or "")


@pytest.mark.parametrize("p, words", [(0.0004, "p < 0.001"), (0.0042, "p = 0.004"), (0.0123, "p = 0.01"),
                                      (0.347, "p = 0.35")])
def test_p_values_in_words(p: float, words: str) -> None:
    assert p_in_words(p) == words


def test_difference_in_words_names_the_better_group_first() -> None:
    rng = np.random.default_rng(0)
    sgd, adam = rng.normal(0.88, 0.01, 10), rng.normal(0.98, 0.002, 10)
    cmp = welch(adam.tolist(), sgd.tolist())  # b = sgd is worse
    sentence = describe_difference("Adam + softmax", "SGD", cmp)
    half = 100 * (cmp.ci_high - cmp.ci_low) / 2  # type: ignore[operator]
    assert sentence == (f"Adam + softmax is {100 * (adam.mean() - sgd.mean()):.1f} ± {half:.1f} points better than SGD "
                        "in final validation accuracy; p < 0.001; 10 vs 10 replicates.")


def test_difference_in_words_says_when_it_is_seed_noise() -> None:
    cmp = welch([0.90, 0.92, 0.91], [0.905, 0.925, 0.915])
    assert "not distinguishable from seed noise" in describe_difference("a", "b", cmp)
    assert describe_difference("a", "b", welch([0.9], [0.9, 0.91])).startswith("Too few replicates to tell")
    assert describe_difference("a", "b", welch([], [])).startswith("No final validation accuracy")


def test_epochs_to_99_percent_of_the_final_value() -> None:
    epochs = list(range(6))
    assert epochs_to_fraction(epochs, [0.1, 0.80, 0.90, 0.95, 0.96, 0.965]) == 4  # 0.99 * 0.965 = 0.955
    assert epochs_to_fraction(epochs, [0.1, 0.97, 0.90, 0.95, 0.96, 0.965]) == 1  # the first time it got there
    assert epochs_to_fraction([0, 1, 2], [0.1, None, 0.5]) == 2
    assert epochs_to_fraction([], []) is None and epochs_to_fraction([0, 1], [0.0, 0.0]) is None


def test_finite_tree_answers_null_for_what_json_cannot_carry() -> None:
    from app.services.stats import finite_tree

    tree = {"a": [1.0, float("nan"), np.float64(2.5), np.int64(3)], "b": {"c": float("inf"), "d": True}, "e": "x"}
    assert finite_tree(tree) == {"a": [1.0, None, 2.5, 3], "b": {"c": None, "d": True}, "e": "x"}
    assert type(finite_tree(np.int64(3))) is int and type(finite_tree(np.float64(2.5))) is float
