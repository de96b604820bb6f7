"""The stacked Keras layers of packed training: R independent Dense layers as one (dense,
PackedDense: kernel (R, in, out), bias (R, out)) and the study's MLP R times over (PackedMLP),
which holds a pack's weights. Re-exported by worker.keras_packed."""

from __future__ import annotations

import keras
import tensorflow as tf

from app.spec import TrainSpec


def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, transposed: bool = False) -> tf.Tensor:
    """R Dense layers at once: x is (R, B, in), one batch per replicate, or (B, in) shared by all;
    kernel (R, in, out), or (R, out, in) when TRANSPOSED (worker.packed_program.transposed_kernels)."""
    rhs = "roi" if transposed else "rio"
    if len(x.shape) == 2:
        return tf.einsum(f"bi,{rhs}->rbo", x, kernel) + bias[:, None, :]
    return tf.einsum(f"rbi,{rhs}->rbo", x, kernel) + bias[:, None, :]


class PackedDense(keras.layers.Layer):  # type: ignore[misc]  # Keras is untyped
    """R independent Dense layers: kernel (R, in, out), bias (R, out)."""

    def __init__(self, replicates: int, units: int, activation: str | None = None, **kwargs: object):
        super().__init__(**kwargs)
        self.replicates, self.units = replicates, units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: tuple[int, ...]) -> None:
        shape = (self.replicates, input_shape[-1], self.units)
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.replicates, self.units), initializer="zeros", name="bias")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.activation(dense(x, self.kernel, self.bias))


class PackedMLP(keras.Model):  # type: ignore[misc]  # Keras is untyped
    """The study's MLP, R times over: (R, B, inputs) or (B, inputs) in, outputs (R, B, classes)."""

    def __init__(self, spec: TrainSpec, replicates: int, inputs: int = 784, classes: int = 10):
        super().__init__()
        hidden = spec.model.hidden or []  # a hidden model (worker.trainer.dense_equivalent)
        widths = [*hidden, classes]
        acts = [spec.model.activation] * len(hidden) + [spec.model.output_activation]
        self.dense = [PackedDense(replicates, w, a) for w, a in zip(widths, acts, strict=True)]
        self.build((1, inputs))

    def build(self, input_shape: tuple[int, ...]) -> None:
        width = input_shape[-1]
        for layer in self.dense:
            layer.build((1, width))
            width = layer.units
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.dense:
            x = layer(x)
        return x
