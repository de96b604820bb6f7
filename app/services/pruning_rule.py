"""A sweep's prune rule (app.services.pruning): its prune block with what the ci method's correction
counts (the configs a search may try, the epochs judged), so every method reads one rule."""

from __future__ import annotations

from dataclasses import dataclass

from app.metrics import describe
from app.spec import SweepSpec


@dataclass(frozen=True)
class PruneRule:
    """A sweep's prune block with what its correction counts: CONFIGS and the looks."""

    method: str
    metric: str
    min_epochs: int
    alpha: float
    configs: int
    epochs: int  # the sweep's most epochs
    higher_is_better: bool = True

    @property
    def looks(self) -> int:
        return max(0, self.epochs - self.min_epochs)

    @property
    def level(self) -> float:
        """ci: the one-sided level of each bound, alpha / (2 C L)."""
        return self.alpha / (2 * max(1, self.configs) * max(1, self.looks))

    def judges(self, epoch: int) -> bool:
        return self.min_epochs <= epoch < self.epochs


def rule_of(spec: SweepSpec, config_count: int) -> PruneRule | None:
    p = spec.prune
    if p is None:
        return None
    configs = max(config_count, spec.max_configs or 0) if spec.searching else config_count
    return PruneRule(p.method, p.metric, p.min_epochs, p.alpha, configs, spec.max_epochs(),
                     describe(p.metric).higher_is_better is not False)
