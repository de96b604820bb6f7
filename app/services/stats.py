"""Statistics across replicates: mean with a t-distribution 95% CI, Welch's comparison of two
groups, and how many epochs a curve needs to reach 99% of its final value. Pure functions."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.numbers import finite_or_none

CONFIDENCE = 0.95


def finite_tree(value: Any) -> Any:
    """VALUE (dicts, lists, numbers) with every float that is not a real number as None and numpy
    scalars as Python's: what a JSON answer can carry."""
    if isinstance(value, dict):
        return {k: finite_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_tree(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float) or hasattr(value, "item"):
        number = value.item() if hasattr(value, "item") else value
        return finite_or_none(float(number)) if isinstance(number, float) else number
    return value


LARGEST_FINAL = 1e50  # beyond, a final is a diverged run's: its square overflows the sums of a test


def usable(values: Sequence[float | None]) -> list[float]:
    """The finite VALUES no larger than LARGEST_FINAL in magnitude: what a test or an ANOVA can sum."""
    return [x for x in finite(values) if abs(x) <= LARGEST_FINAL]


def finite(values: Sequence[float | None]) -> list[float]:
    """The values that are real numbers (NaN, inf and None dropped)."""
    return [float(x) for x in map(finite_or_none, values) if x is not None]


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and the 95% confidence interval of the mean (t-distribution, n-1 df)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}


def summarize(values: Sequence[float | None]) -> Summary:
    """Summary of the finite VALUES; std and CI need at least two of them."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@functools.lru_cache(maxsize=4096)
def t_quantile(df: int) -> float:
    """Student's t quantile for the two-sided CONFIDENCE interval at DF degrees of freedom (scipy;
    remembered: a table of 100 configs asks for the same few, 0.5 ms each)."""
    from scipy import stats as scipy_stats  # 0.8 s to import: only when a statistic is asked for

    return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class Comparison:
    """B minus A: the difference of means, its 95% CI (Welch-Satterthwaite df) and Welch's t-test."""

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    df: float | None
    p: float | None
    reason: str | None  # why there is no test, when there is none

    @property
    def testable(self) -> bool:
        return self.p is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> Comparison:
    """Compare group B with group A (B - A) by Welch's unequal-variances t-test."""
    xa, xb = finite(a), finite(b)
    sa, sb = summarize(xa), summarize(xb)
    diff = sb.mean - sa.mean if sa.mean is not None and sb.mean is not None else None
    if sa.n < 2 or sb.n < 2:
        reason = f"too few replicates to tell ({sa.n} vs {sb.n}; at least 2 in each are needed)"
        return Comparison(sa.n, sb.n, sa.mean, sb.mean, diff, None, None, None, None, None, reason)
    va, vb = (sa.std or 0.0) ** 2 / sa.n, (sb.std or 0.0) ** 2 / sb.n
    se2 = va + vb
    if se2 == 0:
        reason = "no spread in either group: every replicate gives the same value, so no test applies"
        return Comparison(sa.n, sb.n, sa.mean, sb.mean, diff, diff, diff, None, None, None, reason)
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    from scipy import stats as scipy_stats

    result = scipy_stats.ttest_ind(xb, xa, equal_var=False)
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(se2)
    assert diff is not None
    return Comparison(sa.n, sb.n, sa.mean, sb.mean, diff, diff - half, diff + half,
                      float(result.statistic), df, float(result.pvalue), None)


def p_in_words(p: float) -> str:
    """'p < 0.001', 'p = 0.012', 'p = 0.34'."""
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}"


def describe_difference(name_a: str, name_b: str, cmp: Comparison, unit: float = 100.0,
                        what: str = "final validation accuracy") -> str:
    """The comparison in words, the better group first, in percentage points by default:
    'B is 10.2 ± 0.9 points better than A in final validation accuracy; p < 0.001; 10 vs 10 replicates'."""
    counts = f"{cmp.n_a} vs {cmp.n_b} replicates"
    if cmp.diff is None:
        return f"No {what} to compare yet ({counts})."
    if cmp.n_a < 2 or cmp.n_b < 2:
        return f"Too few replicates to tell whether {name_b} differs from {name_a}: {counts}; at least 2 each."
    better, worse, diff = (name_b, name_a, cmp.diff) if cmp.diff >= 0 else (name_a, name_b, -cmp.diff)
    if cmp.p is None or cmp.ci_low is None or cmp.ci_high is None:
        return f"{better} is {diff * unit:.1f} points better than {worse} in {what}; {cmp.reason}; {counts}."
    half = (cmp.ci_high - cmp.ci_low) / 2 * unit
    sentence = f"{better} is {diff * unit:.1f} ± {half:.1f} points better than {worse} in {what}; " \
               f"{p_in_words(cmp.p)}; {counts}"
    if cmp.p >= 0.05:
        sentence += " — not distinguishable from seed noise at the 5% level"
    return sentence + "."


def epochs_to_fraction(epochs: Sequence[int], values: Sequence[float | None],
                       fraction: float = 0.99) -> int | None:
    """The first epoch whose value reaches FRACTION of the last epoch's value (accuracy-like curves).
    None when the curve has no final value or it is not positive."""
    pairs = [(e, x) for e, x in zip(epochs, map(finite_or_none, values), strict=True) if x is not None]
    if not pairs:
        return None
    final = max(pairs, key=lambda p: p[0])[1]
    if final <= 0:
        return None
    target = fraction * final
    return next(e for e, v in sorted(pairs) if v >= target)
