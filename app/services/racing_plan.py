"""A race's plan (app.services.racing): the fixed looks (the first n_k seeds of each config) and the
alpha each look may spend, by Lan-DeMets' O'Brien-Fleming-type function. Fixed by the spec before any
data, which is what lets every look's test keep its level whatever the race did before."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.metrics import describe
from app.spec import SweepSpec


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
