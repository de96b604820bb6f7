"""How many seeds a question needs: the seed noise of a set of configs (pooled standard deviation
of their final values), the smallest difference a two-sided two-sample t-test (pooled, equal n per
config, alpha 0.05) detects with power 0.8 at their median number of replicates, and the number of
replicates per config that detects a given difference. statsmodels' TTestIndPower does the power
arithmetic (noncentral t); it is imported only when a power block is asked for. Pure functions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05
POWER = 0.8
EXACT_BELOW = 1e9  # replicates: below, the exact smallest integer; above, the normal approximation


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1)) over the GROUPS with at least two values; None
    when none has two."""
    num, den = 0.0, 0
    for xs in groups:
        if len(xs) < 2:
            continue
        den += len(xs) - 1
        if min(xs) == max(xs):
            continue  # no spread: exactly 0, whatever the rounding of its mean
        mean = math.fsum(xs) / len(xs)
        num += math.fsum((x - mean) ** 2 for x in xs)
    return math.sqrt(num / den) if den else None


def power_at(effect: float, n: float) -> float:
    """Power of the two-sided two-sample t-test (pooled, N per group, ALPHA) at standardized EFFECT."""
    from statsmodels.stats.power import TTestIndPower

    value = float(TTestIndPower().power(effect_size=effect, nobs1=n, alpha=ALPHA, ratio=1.0,
                                        alternative="two-sided"))
    return 1.0 if math.isnan(value) else value  # the noncentral t's far tail, where power is 1


def detectable_effect(n: float) -> float:
    """The standardized difference (difference / sd) detected with power POWER at N per group."""
    from statsmodels.stats.power import TTestIndPower

    return float(TTestIndPower().solve_power(effect_size=None, nobs1=n, alpha=ALPHA, power=POWER, ratio=1.0,
                                             alternative="two-sided"))


def replicates_for(effect: float) -> int | None:
    """The smallest whole number of replicates per group (at least 2) whose power reaches POWER for
    the standardized EFFECT: statsmodels' continuous answer, then the integers around it. Beyond
    EXACT_BELOW replicates the normal approximation's answer (the t-test's is the same there); None
    when even that is not a finite number (a difference of 1e-300 standard deviations)."""
    if not effect > 0:  # a difference so small against the noise that it rounds to nothing
        return None
    if power_at(effect, 2) >= POWER:
        return 2
    from scipy.stats import norm

    ratio = float(norm.ppf(1 - ALPHA / 2) + norm.ppf(POWER)) / effect
    guess = 2 * ratio * ratio  # the normal approximation, a little below the t-test's answer
    if not math.isfinite(guess):
        return None
    if guess >= EXACT_BELOW:
        return math.ceil(guess)
    try:
        from statsmodels.stats.power import TTestIndPower

        solved = float(TTestIndPower().solve_power(effect_size=effect, nobs1=None, alpha=ALPHA, power=POWER,
                                                   ratio=1.0, alternative="two-sided"))
        if math.isfinite(solved) and solved >= 2:
            guess = solved
    except (ValueError, RuntimeError, ArithmeticError):
        pass
    n = max(2, math.floor(guess) - 1)
    while n > 2 and power_at(effect, n) >= POWER:
        n -= 1
    while power_at(effect, n) < POWER:
        n += 1
    return n


def _median(ns: Sequence[int]) -> float | int:
    m = statistics.median(ns)
    return int(m) if float(m).is_integer() else float(m)


def power_block(groups: Sequence[Sequence[float]], detect: float | None = None) -> dict[str, Any]:
    """The power block of a verdicts answer for the finite final values of each config (GROUPS):
    alpha, power, pooled_sd, n (median replicates over configs with at least 2), the detectable
    difference at that n and, for DETECT, the replicates per config that detect it. When there is no
    noise to work from (fewer than two configs with two replicates, or no spread at all) the numbers
    are null and `reason` says why."""
    eligible = [xs for xs in groups if len(xs) >= 2]
    block: dict[str, Any] = {"alpha": ALPHA, "power": POWER, "pooled_sd": None, "n": None,
                             "detectable_difference": None, "detect": detect, "replicates_needed": None,
                             "reason": None}
    if len(eligible) < 2:
        block["reason"] = (f"{len(eligible)} config{'' if len(eligible) == 1 else 's'} with at least 2 replicates; "
                           "the seed noise of a comparison needs at least 2 such configs")
        return block
    sd = pooled_sd(eligible)
    n = _median([len(xs) for xs in eligible])
    block.update(pooled_sd=sd, n=n)
    if sd is None or sd == 0 or not math.isfinite(sd):
        block["reason"] = "no spread between replicates: every config's seeds gave the same value, so the " \
                          "seed noise is zero and any difference is told apart"
        return block
    block["detectable_difference"] = detectable_effect(n) * sd
    if detect is not None:
        block["replicates_needed"] = replicates_for(detect / sd)
    return block
