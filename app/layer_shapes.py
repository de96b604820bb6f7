"""Whether a `model.layers` stack fits its dataset, checked at submit from shapes alone (no TensorFlow):
each layer's output shape as Keras computes it, and the weight count.

The rules the worker's builder (worker.keras_models.build_model) follows, in one place:
- images of one channel (H, W) get a channel axis, (H, W, 1), when the stack has a conv2d or
  max_pooling2d layer;
- a dense layer (and the output layer sweeplab adds) sees flat inputs: where the input is still an
  image, a Flatten comes first.
"""

from __future__ import annotations

import math
from pathlib import Path

from app.datasets import DatasetUnavailable, describe
from app.errors import InvalidSpec
from app.spec import LayerSpec, SweepSpec

MAX_WEIGHTS = 50_000_000
SPATIAL = ("conv2d", "max_pooling2d")


def needs_channel_axis(layers: list[LayerSpec], input_shape: tuple[int, ...]) -> bool:
    return len(input_shape) == 2 and any(layer.kind in SPATIAL for layer in layers)


def _window(size: int, window: int, stride: int, same: bool) -> int:
    """One spatial dimension after a window (Keras' conv and pooling arithmetic); 0 if it does not fit."""
    if same:
        return math.ceil(size / stride)
    return (size - window) // stride + 1 if size >= window else 0


class Misfit(ValueError):
    """A layer that cannot take its input: `loc` names it (model.layers.2.max_pooling2d)."""

    def __init__(self, loc: str, message: str):
        super().__init__(message)
        self.loc = loc


def weight_count(layers: list[LayerSpec], input_shape: tuple[int, ...], classes: int) -> int:
    """The stack's weights (Keras' count_params: batch normalization's moving statistics included),
    output layer included; Misfit for the first layer that cannot take its input."""
    shape = (*input_shape, 1) if needs_channel_axis(layers, input_shape) else tuple(input_shape)
    weights = 0
    for i, layer in enumerate(layers):
        loc = f"model.layers.{i}.{layer.kind}"
        if layer.dense is not None:
            flat = math.prod(shape)
            weights += flat * layer.dense.units + layer.dense.units
            shape = (layer.dense.units,)
        elif layer.conv2d is not None or layer.max_pooling2d is not None:
            if len(shape) != 3:
                before = "the dataset's flat feature vectors" if i == 0 or len(input_shape) == 1 else \
                    "the flat output of the layers before"
                raise Misfit(loc, f"a {layer.kind} layer needs images (height, width, channels), not {before} "
                                  f"{tuple(shape)}")
            h, w, c = shape
            if layer.conv2d is not None:
                conv = layer.conv2d
                window, stride, same = conv.kernel_size, conv.strides, conv.padding == "same"
                weights += window * window * c * conv.filters + conv.filters
                c = conv.filters
                what = f"kernel_size {window}"
            else:
                assert layer.max_pooling2d is not None
                window = stride = layer.max_pooling2d.pool_size
                same = False
                what = f"pool_size {window}"
            oh, ow = _window(h, window, stride, same), _window(w, window, stride, same)
            if oh < 1 or ow < 1:
                raise Misfit(loc, f"the image is {h}x{w} here: {what} does not fit (a smaller window, padding "
                                  f"'same' or fewer layers before)")
            shape = (oh, ow, c)
        elif layer.batch_normalization is not None:
            weights += 4 * shape[-1]
        elif layer.flatten is not None:
            shape = (math.prod(shape),)
    return weights + math.prod(shape) * classes + classes


def layer_problems(layers: list[LayerSpec], input_shape: tuple[int, ...], classes: int) -> list[tuple[str, str]]:
    """(loc, message) for the first layer that cannot take its input, or a stack too big; [] if it fits."""
    try:
        weights = weight_count(layers, input_shape, classes)
    except Misfit as exc:
        return [(exc.loc, str(exc))]
    if weights > MAX_WEIGHTS:
        return [("model.layers", f"the model has {weights:,} weights; at most {MAX_WEIGHTS:,} (fewer units or "
                                 f"filters, or pooling before the dense layers)")]
    return []


def check_layers_fit(spec: SweepSpec, data_dir: Path) -> None:
    """Every config's `model.layers` stack must fit its dataset: else a 422 naming the layer."""
    for config in spec.expand():
        layers = config.train.model.layers
        if layers is None:
            continue
        try:
            info = describe(config.train.dataset, data_dir)
        except DatasetUnavailable:
            continue  # the dataset check reports it
        problems = layer_problems(layers, info.input_shape, info.classes)
        if problems:
            loc, msg = problems[0]
            if config.params:
                msg = f"with {', '.join(f'{k}={v}' for k, v in config.params.items())}: {msg}"
            msg = f"{msg} (dataset {info.name}: examples of shape {info.input_shape})"
            raise InvalidSpec(f"{loc}: {msg}", [{"loc": loc, "msg": msg}])
