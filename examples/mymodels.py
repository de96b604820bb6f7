"""Model builders for `model: {builder: "mymodels:<function>"}` (copy this file into the folder a
worker's SWEEPLAB_CODE_DIR names). Each builder is called once per run, after
`keras.utils.set_random_seed(seed)`, as

    build(params, input_shape, classes) -> keras.Model

- params: the spec's `params` (a dict: its grid values filled in, e.g. params.dropout);
- input_shape: one example's shape, channels last: (16, 16, 1) for 16x16 grey images, MNIST's
  28x28 images as (28, 28, 1), (32, 32, 3) for CIFAR-10, (F,) for feature vectors;
- classes: the dataset's class count; the model must answer (batch, classes).

Leave the model uncompiled and the spec's optimizer, loss and metric compile it; or compile it
yourself (your optimizer and loss are kept; sweeplab adds its accuracy metric). Labels arrive as
integers (one-hot with the spec's loss `mse`).
"""

from __future__ import annotations

from typing import Any

import keras


def small_cnn(params: dict[str, Any], input_shape: tuple[int, ...], classes: int) -> keras.Model:
    """Conv(filters) -> max-pool -> flatten -> dropout -> softmax: params filters (4) and dropout (0.0)."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(int(params.get("filters", 4)), 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(float(params.get("dropout", 0.0))),
        keras.layers.Dense(classes, activation="softmax"),
    ])


def residual_mlp(params: dict[str, Any], input_shape: tuple[int, ...], classes: int) -> keras.Model:
    """A functional model, compiled here with its own optimizer: `width` units, `blocks` residual blocks."""
    width, blocks = int(params.get("width", 64)), int(params.get("blocks", 2))
    inputs = keras.Input(input_shape)
    x = keras.layers.Dense(width, activation="relu")(keras.layers.Flatten()(inputs))
    for _ in range(blocks):
        x = keras.layers.Add()([x, keras.layers.Dense(width, activation="relu")(x)])
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.SGD(float(params.get("learning_rate", 0.05)), momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model
