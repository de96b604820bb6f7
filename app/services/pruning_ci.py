"""The ci prune rule (app.services.pruning), pure: one-sided t bounds on each config's mean at an
epoch, Bonferroni over configs, looks and sides, so a config at least as good as the best is
pruned with chance at most alpha."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.services.pruning_rule import PruneRule


def _number(x: float, other: float) -> tuple[str, str]:
    """X and OTHER with the fewest significant digits (3 or more) that tell them apart."""
    for digits in range(3, 10):
        a, b = f"{x:.{digits}g}", f"{other:.{digits}g}"
        if a != b:
            return a, b
    return f"{x:.10g}", f"{other:.10g}"


@dataclass(frozen=True)
class Bounds:
    n: int
    mean: float
    low: float
    high: float


def bounds(values: Sequence[float], level: float) -> Bounds | None:
    """Mean over VALUES with its one-sided t bounds at LEVEL each (None with fewer than 2 values)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n < 2:
        return None
    from scipy import stats as scipy_stats

    mean = math.fsum(xs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(scipy_stats.t.isf(level, n - 1)) * sd / math.sqrt(n)
    return Bounds(n, mean, mean - half, mean + half)


def ci_decisions(values: Mapping[int, Sequence[float]], candidates: Sequence[int], rule: PruneRule, epoch: int,
                 labels: Mapping[int, str]) -> dict[int, str]:
    """Configs of CANDIDATES to prune at EPOCH by the ci rule, with the reason; VALUES: the metric at
    EPOCH of each config's replicates (every config whose data at EPOCH are complete)."""
    held = {c: b for c, xs in values.items() if (b := bounds(xs, rule.level)) is not None}
    if len(held) < 2:
        return {}
    sign = 1.0 if rule.higher_is_better else -1.0
    best = max(held, key=lambda c: sign * held[c].mean)
    top = held[best]
    out = {}
    confidence = f"{100 * (1 - rule.level):.4g}%"
    for c in candidates:
        b = held.get(c)
        if c == best or b is None:
            continue
        if rule.higher_is_better and b.high < top.low:
            mine, theirs = _number(b.high, top.low)
            words = f"upper bound {mine} below the best's lower bound {theirs}"
        elif not rule.higher_is_better and b.low > top.high:
            mine, theirs = _number(b.low, top.high)
            words = f"lower bound {mine} above the best's upper bound {theirs}"
        else:
            continue
        out[c] = (f"pruned at epoch {epoch}: {words} ({rule.metric}, {b.n} vs {top.n} seeds, the best "
                  f"{labels.get(best, best)}; one-sided {confidence} bounds: alpha {rule.alpha:g} over "
                  f"{rule.configs} configs x {rule.looks} epochs, both sides)")
    return out
