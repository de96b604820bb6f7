"""The seconds one pack spends per phase (data, build, evaluate, train, record, settle...), logged
in one line when the pack ends (worker.runner); bench/study.py sums these lines."""

from __future__ import annotations

import time


class PhaseClock:
    """Seconds spent per phase of one pack (data, build, evaluate, train, record, settle...), logged
    in one line when the pack ends: where a pack's wall time goes, measured, not guessed."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def line(self) -> str:
        total = time.perf_counter() - self.started
        parts = " ".join(f"{k}={v:.2f}" for k, v in self.seconds.items())
        return f"{total:.2f}s: {parts} other={total - sum(self.seconds.values()):.2f}"
