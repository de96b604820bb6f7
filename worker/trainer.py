"""What every trainer shares: prepared data, per-epoch shuffle orders, the checkpoint format.

A trainer trains R replicates (R >= 1) of one config. Its checkpoint of one replicate is a flat
dict of numpy arrays in the *canonical state* format, the same for packed and one-model trainers,
so a run checkpointed by one kind can resume in the other:

- ``w/{j}``: the j-th trainable variable of the standalone Sequential model (layer i's kernel is
  j = 2i, its bias j = 2i + 1; shapes as in a standalone Dense layer);
- ``opt/iteration``: the optimizer's step count (int64 scalar), absent before the first step;
- ``opt/{slot}/{j}``: optimizer slot ``slot`` (Keras' names: ``momentum``, ``velocity``) for
  variable j, same shape as ``w/{j}``.

This module imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app import metrics
from app.datasets import ImageData
from app.spec import TrainSpec

State = dict[str, np.ndarray]
EpochMetrics = dict[str, float]  # keyed by the catalogue's keys (app/metrics.py)
METRIC_KEYS = metrics.TRAINER_KEYS  # what every trainer reports per epoch and replicate


@dataclass(frozen=True)
class PreparedData:
    """Inputs scaled to [0, 1] as float32 (N, 28, 28); labels as int and one-hot."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def from_images(cls, data: ImageData) -> PreparedData:
        return cls(
            (data.x_train.astype(np.float32) / 255.0),
            data.y_train.astype(np.int64),
            (data.x_test.astype(np.float32) / 255.0),
            data.y_test.astype(np.int64),
        )

    def targets(self, loss: str, split: str) -> np.ndarray:
        """Training targets as the loss wants them: integer labels, or one-hot for mse."""
        y = self.y_train if split == "train" else self.y_test
        if loss == "mse":
            one_hot: np.ndarray = np.eye(10, dtype=np.float32)[y]
            return one_hot
        return y


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle order of epoch `epoch` (1-based) for replicate `seed`: a pure function, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Trainer(Protocol):
    """Trains replicates 0..R-1 of one config in lock-step, one epoch per call."""

    def evaluate(self) -> dict[int, EpochMetrics]:
        """The METRIC_KEYS of each active replicate's current weights (training and test set)."""

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        """Train epoch `epoch` (1-based); per active replicate its METRIC_KEYS: the training ones as
        Keras' history reports them, the validation ones on the test set. None if stopped mid-epoch."""

    def state(self, replicate: int) -> State:
        """Canonical checkpoint of one replicate (weights and optimizer state)."""

    def drop(self, replicate: int) -> None:
        """Stop training one replicate (cancelled or lost); the others go on."""

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        """The network's outputs (N, 10) for inputs x (N, 28, 28) in [0, 1]."""

    def save_keras(self, replicate: int, path: str) -> None:
        """Write the replicate's trained model as a standalone Keras Sequential `.keras` file."""


TrainerFactory = Callable[[TrainSpec, list[int], PreparedData, list[State | None]], Trainer]
