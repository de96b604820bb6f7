"""Keras Sequential models as the study builds them, and their canonical checkpoint state.

Imports TensorFlow/Keras: only the worker's training code imports this module, after
`worker.main.configure_tensorflow` has set TensorFlow's environment.
"""

from __future__ import annotations

import keras
import numpy as np

from app.metrics import ACCURACY
from app.spec import TrainSpec
from worker.trainer import State


def build_model(spec: TrainSpec) -> keras.Sequential:
    """Flatten(28x28) -> Dense(w, activation)... -> Dense(10, output_activation), Keras' default init."""
    layers: list[keras.layers.Layer] = [keras.Input((28, 28)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(w, activation=spec.model.activation) for w in spec.model.hidden]
    layers.append(keras.layers.Dense(10, activation=spec.model.output_activation))
    return keras.Sequential(layers)


def build_optimizer(spec: TrainSpec) -> keras.optimizers.Optimizer:
    lr = spec.optimizer.learning_rate
    if spec.optimizer.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr)
    if spec.optimizer.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    return keras.optimizers.Adam(learning_rate=lr)


def keras_loss(spec: TrainSpec) -> str:
    # The study's my_loss, (y_true - y_pred)**2 reduced by Keras' "sum_over_batch_size", is the mean
    # over the batch and the 10 outputs: exactly Keras' mean squared error on one-hot targets.
    return "mse" if spec.loss == "mse" else "sparse_categorical_crossentropy"


def compiled_model(spec: TrainSpec, seed: int) -> keras.Sequential:
    """A fresh model whose initial weights come from `keras.utils.set_random_seed(seed)`."""
    keras.utils.set_random_seed(seed)
    model = build_model(spec)
    model.compile(optimizer=build_optimizer(spec), loss=keras_loss(spec), metrics=[ACCURACY])  # Keras names it as we do
    return model


def fresh_state(spec: TrainSpec, seed: int) -> State:
    """The initial weights a standalone model gets from its seed, in canonical form."""
    model = compiled_model(spec, seed)
    return {f"w/{j}": np.asarray(v.numpy()) for j, v in enumerate(model.trainable_variables)}


SLOTS = ("momentum", "velocity")  # what SGD (with momentum), Adam and RMSprop keep per weight
UNSAVED = ("learning_rate",)  # fixed by the spec; the iteration count is saved as opt/iteration


def _slot_vars(model: keras.Sequential) -> dict[str, keras.Variable]:
    """Optimizer slot variables by canonical key, "opt/<slot>/<weight index>" (built on demand).

    Found through the public `optimizer.variables`: Keras names the slot of weight `w` for slot
    `s` `f"{w.path.replace('/', '_')}_{s}"` (Optimizer.add_variable_from_reference)."""
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    by_name = {v.name: v for v in opt.variables}
    out: dict[str, keras.Variable] = {"opt/iteration": opt.iterations}
    for j, weight in enumerate(model.trainable_variables):
        for slot in SLOTS:
            found = by_name.get(f"{weight.path.replace('/', '_')}_{slot}")
            if found is not None:
                out[f"opt/{slot}/{j}"] = found
    kept = {id(v) for v in out.values()}
    missed = [v.path for v in opt.variables if id(v) not in kept and v.name not in UNSAVED]
    if missed:  # a Keras that names slots otherwise: resuming without them would train differently
        raise RuntimeError(f"optimizer state not in the checkpoint: {', '.join(missed)}")
    return out


def get_state(model: keras.Sequential) -> State:
    state = {f"w/{j}": np.asarray(v.numpy()) for j, v in enumerate(model.trainable_variables)}
    if model.optimizer.built:
        state.update({k: np.asarray(v.numpy()) for k, v in _slot_vars(model).items()})
    return state


def set_state(model: keras.Sequential, state: State) -> None:
    for j, v in enumerate(model.trainable_variables):
        v.assign(state[f"w/{j}"])
    if "opt/iteration" in state:
        for key, var in _slot_vars(model).items():
            var.assign(state[key])
