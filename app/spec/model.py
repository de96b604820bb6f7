"""The `model` of a spec: hidden widths, a list of layers, or a builder of the workers' code, and its output layer."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from app.spec.layers import Activation, LayerSpec
from app.spec.strict import _Strict

MAX_HIDDEN_LAYERS = 10
MAX_WIDTH = 8192
MAX_LAYERS = 50
OutputActivation = Literal["softmax", "relu", "sigmoid", "linear"]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]

BUILDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
BUILDER_RULE = ("a builder is 'module:function' (Python names, e.g. mymodels:small_cnn): the function "
                "build(params, input_shape, classes) of a module in the workers' SWEEPLAB_CODE_DIR")
MODEL_KINDS = ("hidden", "layers", "builder")


def _check_builder(value: str | None) -> str | None:
    if value is not None and not BUILDER.fullmatch(value):
        raise ValueError(BUILDER_RULE)
    return value


class ModelSpec(_Strict):
    """One of three: `hidden` (Flatten -> Dense(w, activation) for w in hidden), `layers` (a list of
    LayerSpec), or `builder` (a function of the workers' code folder; never imported by the server).
    For hidden and layers sweeplab adds the output layer, Dense(classes, output_activation).
    Neither given: hidden [32]."""

    hidden: list[Width] | None = Field(default=None, max_length=MAX_HIDDEN_LAYERS)
    layers: list[LayerSpec] | None = Field(default=None, max_length=MAX_LAYERS)
    builder: Annotated[str | None, AfterValidator(_check_builder)] = Field(default=None, max_length=200)
    activation: Activation = "relu"
    output_activation: OutputActivation = "softmax"

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        given = [k for k in MODEL_KINDS if getattr(self, k) is not None]
        if not given:
            self.hidden = [32]
        elif len(given) > 1:
            raise ValueError(f"give one of model.hidden, model.layers and model.builder, not {' and '.join(given)}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_kinds(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The kinds not used are left out (and a hidden model's dump is what it was before layers and
        builders came, so its config key stays)."""
        return {k: v for k, v in handler(self).items() if not (k in MODEL_KINDS and v is None)}
