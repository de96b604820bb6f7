"""One Keras model per replicate, trained with model.fit one epoch at a time: the study's way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from app.metrics import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS
from app.spec import TrainSpec
from worker.keras_models import compiled_model, fresh_state, get_state, set_state
from worker.trainer import METRIC_KEYS, EpochMetrics, PreparedData, State, epoch_order

STOP_CHECK_EVERY = 20  # batches between looks at the stop flag


class _StopWhenAsked(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop
        self.stopped = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch % STOP_CHECK_EVERY == 0 and self.should_stop():
            self.stopped = True
            self.model.stop_training = True


class SingleTrainer:
    """Replicates as separate Sequential models, each trained with its own model.fit."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None]):
        self.spec, self.seeds, self.data = spec, seeds, data
        self.models: dict[int, keras.Sequential] = {}
        for i, (seed, state) in enumerate(zip(seeds, states, strict=True)):
            model = compiled_model(spec, seed)
            set_state(model, state if state is not None else fresh_state(spec, seed))
            self.models[i] = model
        self.y_train = data.targets(spec.loss, "train")
        self.y_test = data.targets(spec.loss, "test")

    def evaluate(self) -> dict[int, EpochMetrics]:
        out = {}
        for i, model in self.models.items():
            loss, acc = model.evaluate(self.data.x_train, self.y_train, batch_size=1024, verbose=0)
            val_loss, val_acc = model.evaluate(self.data.x_test, self.y_test, batch_size=1024, verbose=0)
            out[i] = {LOSS: loss, ACCURACY: acc, VAL_LOSS: val_loss, VAL_ACCURACY: val_acc}
        return out

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        out = {}
        for i, model in self.models.items():
            order = epoch_order(self.seeds[i], epoch, len(self.data.x_train))
            stopper = _StopWhenAsked(should_stop)
            hist = model.fit(
                self.data.x_train[order], self.y_train[order],
                batch_size=self.spec.batch_size, epochs=1, shuffle=False, verbose=0,
                validation_data=(self.data.x_test, self.y_test), callbacks=[stopper],
            )
            if stopper.stopped:
                return None
            h = hist.history  # Keras names its history as the catalogue names the keys
            out[i] = {k: float(h[k][-1]) for k in METRIC_KEYS}
        return out

    def state(self, replicate: int) -> State:
        return get_state(self.models[replicate])

    def drop(self, replicate: int) -> None:
        self.models.pop(replicate, None)

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.models[replicate].predict(x, batch_size=1024, verbose=0))

    def save_keras(self, replicate: int, path: str) -> None:
        self.models[replicate].save(path)
