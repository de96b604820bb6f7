"""Keras models as a spec builds them (hidden, layers), and their canonical checkpoint state.

Imports TensorFlow/Keras: only the worker's training code imports this module, after
`worker.main.configure_tensorflow` has set TensorFlow's environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from app.layer_shapes import needs_channel_axis
from app.metrics import ACCURACY
from app.spec import LayerSpec, TrainSpec
from worker.trainer import State

MNIST_SHAPE = (28, 28)  # the defaults: the study's data
MNIST_CLASSES = 10


def model_input_shape(spec: TrainSpec, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """What the model takes: the data's shape, with a channel axis for one-channel (H, W) images when
    the model is a builder's or has conv or pooling layers (app.layer_shapes)."""
    if len(data_shape) == 2 and (spec.model.builder is not None
                                 or needs_channel_axis(spec.model.layers or [], data_shape)):
        return (*data_shape, 1)
    return data_shape


def _keras_layer(layer: LayerSpec) -> keras.layers.Layer:
    if layer.dense is not None:
        return keras.layers.Dense(layer.dense.units, activation=layer.dense.activation)
    if layer.conv2d is not None:
        c = layer.conv2d
        return keras.layers.Conv2D(c.filters, c.kernel_size, strides=c.strides, padding=c.padding,
                                   activation=c.activation)
    if layer.max_pooling2d is not None:
        return keras.layers.MaxPooling2D(layer.max_pooling2d.pool_size)
    if layer.dropout is not None:
        return keras.layers.Dropout(layer.dropout.rate)
    if layer.batch_normalization is not None:
        return keras.layers.BatchNormalization()
    return keras.layers.Flatten()


def build_model(spec: TrainSpec, input_shape: tuple[int, ...] = MNIST_SHAPE,
                classes: int = MNIST_CLASSES) -> keras.Sequential:
    """hidden: Flatten -> Dense(w, activation)... -> Dense(classes, output_activation). layers: each
    layer in turn, a Flatten before a dense layer (or the output layer) whose input is still an
    image (app.layer_shapes' rules). Keras' default initialisers."""
    model = spec.model
    shape = model_input_shape(spec, input_shape)
    layers: list[keras.layers.Layer] = [keras.Input(shape)]
    flat = len(shape) == 1
    if model.hidden is not None:
        layers.append(keras.layers.Flatten())
        layers += [keras.layers.Dense(w, activation=model.activation) for w in model.hidden]
        flat = True
    elif model.layers is not None:
        for layer in model.layers:
            if layer.dense is not None and not flat:
                layers.append(keras.layers.Flatten())
            layers.append(_keras_layer(layer))
            if layer.dense is not None or layer.flatten is not None:
                flat = True
    else:
        raise ValueError("a builder's model is built by worker.builders, not here")
    if not flat:
        layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Dense(classes, activation=model.output_activation))
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


def compile_as_spec(model: keras.Model, spec: TrainSpec, metrics: Sequence[Any] = (ACCURACY,)) -> None:
    """The spec's optimizer and loss, and METRICS (the catalogue's accuracy unless a trainer measures
    more: Keras names each as the catalogue does)."""
    model.compile(optimizer=build_optimizer(spec), loss=keras_loss(spec), metrics=list(metrics))


def compiled_model(spec: TrainSpec, seed: int, input_shape: tuple[int, ...] = MNIST_SHAPE,
                   classes: int = MNIST_CLASSES, metrics: Sequence[Any] = (ACCURACY,)) -> keras.Sequential:
    """A fresh model whose initial weights come from `keras.utils.set_random_seed(seed)`."""
    model = seeded_model(spec, seed, input_shape, classes)
    compile_as_spec(model, spec, metrics)
    return model


def seeded_model(spec: TrainSpec, seed: int, input_shape: tuple[int, ...] = MNIST_SHAPE,
                 classes: int = MNIST_CLASSES) -> keras.Sequential:
    """compiled_model before its compile (which draws nothing): the same initial weights."""
    keras.utils.set_random_seed(seed)
    return build_model(spec, input_shape, classes)


def fresh_state(spec: TrainSpec, seed: int, input_shape: tuple[int, ...] = MNIST_SHAPE,
                classes: int = MNIST_CLASSES) -> State:
    """The initial weights a standalone model gets from its seed, in canonical form (seeded_model's:
    no compile, a pack of 10 built ~0.2 s faster)."""
    model = seeded_model(spec, seed, input_shape, classes)
    return {f"w/{j}": np.asarray(v.numpy()) for j, v in enumerate(model.trainable_variables)}


SLOTS = ("momentum", "velocity")  # what SGD (with momentum), Adam and RMSprop keep per weight
UNSAVED = ("learning_rate",)  # fixed by the spec; the iteration count is saved as opt/iteration


def _slot_vars(model: keras.Model, any_optimizer: bool = False) -> dict[str, keras.Variable]:
    """Optimizer slot variables by canonical key, "opt/<slot>/<weight index>" (built on demand).

    Found through the public `optimizer.variables`: Keras names the slot of weight `w` for slot
    `s` `f"{w.path.replace('/', '_')}_{s}"` (Optimizer.add_variable_from_reference). With
    ANY_OPTIMIZER (a builder's own optimizer) other variables are kept by index as "opt/other/<k>";
    without, they are an error: a spec's optimizer must checkpoint as packed training reads it."""
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
    others = [(k, v) for k, v in enumerate(opt.variables) if id(v) not in kept and v.name not in UNSAVED]
    if others and not any_optimizer:  # a Keras that names slots otherwise: resuming without them would differ
        raise RuntimeError(f"optimizer state not in the checkpoint: {', '.join(v.path for _, v in others)}")
    out.update({f"opt/other/{k}": v for k, v in others})
    return out


def get_state(model: keras.Model, any_optimizer: bool = False) -> State:
    state = {f"w/{j}": np.asarray(v.numpy()) for j, v in enumerate(model.trainable_variables)}
    state.update({f"n/{j}": np.asarray(v.numpy()) for j, v in enumerate(model.non_trainable_variables)})
    if model.optimizer.built:
        state.update({k: np.asarray(v.numpy()) for k, v in _slot_vars(model, any_optimizer).items()})
    return state


def set_state(model: keras.Model, state: State, any_optimizer: bool = False) -> None:
    for j, v in enumerate(model.trainable_variables):
        v.assign(state[f"w/{j}"])
    for j, v in enumerate(model.non_trainable_variables):
        if f"n/{j}" in state:
            v.assign(state[f"n/{j}"])
    if "opt/iteration" in state:
        for key, var in _slot_vars(model, any_optimizer).items():
            var.assign(state[key])
