"""A trainer without TensorFlow for queue tests and benchmarks: sleeps, then reports metrics that
are a pure function of (seed, epoch) and of its state, so resumes can be checked exactly.

Chosen with SWEEPLAB_TRAINER=fake. SWEEPLAB_FAKE_EPOCH_SECONDS sets the sleep per epoch;
SWEEPLAB_FAKE_POISON_SEED makes runs with that seed kill their own process (a poison run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from app.config import Settings
from app.metrics import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS
from app.spec import TrainSpec
from worker.trainer import EpochMetrics, PreparedData, State


class FakeTrainer:
    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData | None, states: list[State | None],
                 learning_rates: list[float] | None = None):
        self.seeds = seeds
        self.learning_rates = learning_rates  # kept for tests: its metrics do not depend on them
        # Settings read when a trainer is made, not the worker's: a test may change the sleep between packs.
        knobs = Settings()
        self.sleep, self.poison = knobs.fake_epoch_seconds, knobs.fake_poison_seed
        # The state is the number of epochs trained: a resumed run continues from its checkpoint.
        self.done = {i: int(st["epochs_done"]) if st is not None else 0 for i, st in enumerate(states)}

    def _metrics(self, i: int) -> EpochMetrics:
        e = self.done[i]
        acc = 1.0 - 0.9 / (1.0 + e + self.seeds[i] % 7 * 0.01)
        return {LOSS: 1.0 - acc, ACCURACY: acc, VAL_LOSS: 1.05 - acc, VAL_ACCURACY: acc - 0.01}

    def evaluate(self) -> dict[int, EpochMetrics]:
        return {i: self._metrics(i) for i in self.done}

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        if self.poison is not None and self.poison in [self.seeds[i] for i in self.done]:
            os._exit(17)  # the process dies, as on an out-of-memory kill
        end = time.monotonic() + self.sleep
        while time.monotonic() < end:
            if should_stop():
                return None
            time.sleep(min(0.01, self.sleep))
        for i in self.done:
            if self.done[i] != epoch - 1:
                raise RuntimeError(f"replicate {i} asked to train epoch {epoch} after {self.done[i]}")
            self.done[i] = epoch
        return {i: self._metrics(i) for i in self.done}

    def state(self, replicate: int) -> State:
        return {"epochs_done": np.array(self.done[replicate])}

    def drop(self, replicate: int) -> None:
        self.done.pop(replicate, None)

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 10), dtype=np.float32)
        out[:, self.seeds[replicate] % 10] = 1.0
        return out

    def save_keras(self, replicate: int, path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"fake model of seed %d" % self.seeds[replicate])
