"""One Keras model per replicate, trained with model.fit one epoch at a time: the study's way, and
the way of every model packed training does not cover (conv layers, dropout, batch normalization,
a builder's model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.metrics import ACCURACY, VALIDATION_PREFIX
from app.spec import TrainSpec
from worker.builders import build_user_model
from worker.keras_models import compile_as_spec, compiled_model, get_state, model_input_shape, set_state
from worker.trainer import EpochMetrics, PreparedData, State, epoch_order, replicate_specs

STOP_CHECK_EVERY = 20  # batches between looks at the stop flag
EVAL_BATCH = 1024


def measured(spec: TrainSpec) -> list[Any]:
    """The metrics each model is compiled with, fresh objects per model (Keras' metrics keep state).
    Keras names them, and their `val_` twins, by the catalogue's keys (app/metrics.py): what a model
    is compiled to measure is what `evaluate` and `train_epoch` report."""
    return [ACCURACY]


class _StopWhenAsked(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop
        self.stopped = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch % STOP_CHECK_EVERY == 0 and self.should_stop():
            self.stopped = True
            self.model.stop_training = True


def _compiled_builder_model(spec: TrainSpec, seed: int, data: PreparedData, shape: tuple[int, ...],
                            code_dir: Path | None) -> keras.Model:
    """A builder's model, compiled: as the builder compiled it (its optimizer and loss; the metric
    recompiled to the trainer's metrics), or with the spec's optimizer, loss and the trainer's metrics."""
    sample = data.x_train[:2].reshape((-1, *shape))
    model = build_user_model(spec, seed, shape, data.classes, code_dir, sample)
    if getattr(model, "compiled", False) and model.optimizer is not None:
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=measured(spec))
    else:
        compile_as_spec(model, spec, measured(spec))
    return model


class SingleTrainer:
    """Replicates as separate Keras models, each trained with its own model.fit (each compiled with
    its own learning rate when a pack mixes them; a builder's own optimizer keeps its own)."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None],
                 learning_rates: list[float] | None = None, code_dir: Path | None = None):
        self.spec, self.seeds, self.data = spec, seeds, data
        self.builder = spec.model.builder is not None
        self.shape = model_input_shape(spec, data.input_shape)
        self.x_train = self._shaped(data.x_train)
        self.x_test = self._shaped(data.x_test)
        self.models: dict[int, keras.Model] = {}
        specs = replicate_specs(spec, len(seeds), learning_rates)
        for i, (seed, state, own) in enumerate(zip(seeds, states, specs, strict=True)):
            if self.builder:
                model = _compiled_builder_model(own, seed, data, self.shape, code_dir)
            else:
                model = compiled_model(own, seed, data.input_shape, data.classes, measured(own))
            if state is not None:  # else the model keeps the initial weights its seed gave it
                set_state(model, state, any_optimizer=self.builder)
            self.models[i] = model
        self.y_train = data.targets(spec.loss, "train")
        self.y_test = data.targets(spec.loss, "test")

    def _shaped(self, x: np.ndarray) -> np.ndarray:
        """Inputs as the model takes them (a channel axis added where the model wants one; no copy)."""
        return x.reshape((len(x), *self.shape))

    def evaluate(self) -> dict[int, EpochMetrics]:
        out = {}
        for i, model in self.models.items():
            train = model.evaluate(self.x_train, self.y_train, batch_size=EVAL_BATCH, verbose=0, return_dict=True)
            test = model.evaluate(self.x_test, self.y_test, batch_size=EVAL_BATCH, verbose=0, return_dict=True)
            out[i] = {**{k: float(v) for k, v in train.items()},
                      **{VALIDATION_PREFIX + k: float(v) for k, v in test.items()}}
        return out

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        out = {}
        for i, model in self.models.items():
            order = epoch_order(self.seeds[i], epoch, len(self.x_train))
            stopper = _StopWhenAsked(should_stop)
            hist = model.fit(
                self.x_train[order], self.y_train[order],
                batch_size=self.spec.batch_size, epochs=1, shuffle=False, verbose=0,
                validation_data=(self.x_test, self.y_test), callbacks=[stopper],
            )
            if stopper.stopped:
                return None
            # Keras names its history as the catalogue names the keys: loss, each compiled metric, their val_ twins
            out[i] = {k: float(v[-1]) for k, v in hist.history.items()}
        return out

    def state(self, replicate: int) -> State:
        return get_state(self.models[replicate], any_optimizer=self.builder)

    def drop(self, replicate: int) -> None:
        self.models.pop(replicate, None)

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.models[replicate].predict(self._shaped(x), batch_size=EVAL_BATCH, verbose=0))

    def save_keras(self, replicate: int, path: str) -> None:
        self.models[replicate].save(path)
