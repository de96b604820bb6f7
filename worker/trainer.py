"""What every trainer shares: prepared data, per-epoch shuffle orders, the checkpoint format.

A trainer trains R replicates (R >= 1) of one config. Its checkpoint of one replicate is a flat
dict of numpy arrays in the *canonical state* format, the same for packed and one-model trainers,
so a run checkpointed by one kind can resume in the other:

- ``w/{j}``: the j-th trainable variable of the standalone Sequential model (layer i's kernel is
  j = 2i, its bias j = 2i + 1; shapes as in a standalone Dense layer);
- ``n/{j}``: the j-th non-trainable variable (batch normalization's moving statistics, dropout's
  seed state), for models that have them (never packed ones);
- ``opt/iteration``: the optimizer's step count (int64 scalar), absent before the first step;
- ``opt/{slot}/{j}``: optimizer slot ``slot`` (Keras' names: ``momentum``, ``velocity``) for
  variable j, same shape as ``w/{j}``;
- ``opt/other/{k}``: the k-th variable of a builder's own optimizer that is none of the above
  (its models are never packed, and resume only into the same builder's model).

This module imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app import metrics
from app.datasets import ImageData
from app.spec import ModelSpec, TrainSpec

State = dict[str, np.ndarray]
EpochMetrics = dict[str, float]  # keyed by the catalogue's keys (app/metrics.py)
METRIC_KEYS = metrics.TRAINER_KEYS  # what every trainer reports per epoch and replicate


class ModelBuildError(Exception):
    """A model cannot be built for its data (a builder that raised, returned no keras.Model, or made a
    model that does not fit the dataset): the run fails with this text, the builder's own words."""


def _as_float(x: np.ndarray) -> np.ndarray:
    """uint8 inputs scaled to [0, 1] (as MNIST's are), float inputs as they are; float32 either way."""
    if x.dtype == np.uint8:
        scaled: np.ndarray = x.astype(np.float32) / 255.0
        return scaled
    return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class PreparedData:
    """Inputs as float32 (N, *input_shape), uint8 ones scaled to [0, 1]; integer labels; the class count."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10

    @classmethod
    def from_images(cls, data: ImageData) -> PreparedData:
        return cls(_as_float(data.x_train), data.y_train.astype(np.int64), _as_float(data.x_test),
                   data.y_test.astype(np.int64), data.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example as stored: (F,), (H, W) or (H, W, C)."""
        return tuple(int(n) for n in self.x_train.shape[1:])

    def targets(self, loss: str, split: str) -> np.ndarray:
        """Training targets as the loss wants them: integer labels, or one-hot for mse."""
        y = self.y_train if split == "train" else self.y_test
        if loss == "mse":
            one_hot: np.ndarray = np.eye(self.classes, dtype=np.float32)[y]
            return one_hot
        return y


def dense_equivalent(spec: TrainSpec) -> TrainSpec | None:
    """SPEC with its model as `hidden` widths if it is a plain Dense stack of one activation (what
    packed training trains: a `hidden` model, or `layers` of dense layers only), else None. The
    two build the same network (Flatten, the Dense layers, the output layer), weights in the same
    order, so their checkpoints are interchangeable."""
    model = spec.model
    if model.hidden is not None:
        return spec
    if model.layers is None:
        return None
    dense = [layer.dense for layer in model.layers]
    activations = {d.activation for d in dense if d is not None}
    if any(d is None for d in dense) or len(activations) > 1:
        return None
    hidden = ModelSpec(hidden=[d.units for d in dense if d is not None],
                       activation=activations.pop() if activations else model.activation,
                       output_activation=model.output_activation)
    return spec.model_copy(update={"model": hidden})


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
        """Stop training one replicate (cancelled, lost, pruned, or its epochs done); the others go
        on. What the replicate was (its state, predictions) is read before it is dropped."""

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        """The network's outputs (N, classes) for prepared inputs x (N, *input_shape)."""

    def save_keras(self, replicate: int, path: str) -> None:
        """Write the replicate's trained model as a standalone Keras `.keras` file."""


class TrainerFactory(Protocol):
    """Makes the trainer of a pack: SPEC the settings its replicates share (app/packing.py), one seed
    and state per replicate, and LEARNING_RATES, one per replicate, when the pack mixes rates
    (omitted or None: the spec's rate for all). Epochs are the runner's: it drops a replicate whose
    epochs are done."""

    def __call__(self, spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None],
                 learning_rates: list[float] | None = None) -> Trainer: ...


def replicate_specs(spec: TrainSpec, count: int, learning_rates: list[float] | None) -> list[TrainSpec]:
    """Each replicate's own settings: SPEC with the replicate's learning rate (SPEC for all without rates)."""
    if learning_rates is None:
        return [spec] * count
    if len(learning_rates) != count:
        raise ValueError(f"{len(learning_rates)} learning rates for {count} replicates")
    return [spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"learning_rate": rate})})
            for rate in learning_rates]
