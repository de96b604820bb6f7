"""model.layers: the layer kinds a spec can stack, each with its bounded settings, and LayerSpec (one of them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from app.spec.strict import _Strict

Activation = Literal["relu", "sigmoid", "tanh", "linear"]

MAX_UNITS = 4096
MAX_FILTERS = 1024
MAX_WINDOW = 11  # kernel, stride and pool sizes
Padding = Literal["valid", "same"]


class DenseLayer(_Strict):
    units: int = Field(ge=1, le=MAX_UNITS)
    activation: Activation = "relu"


class Conv2DLayer(_Strict):
    filters: int = Field(ge=1, le=MAX_FILTERS)
    kernel_size: int = Field(default=3, ge=1, le=MAX_WINDOW)
    strides: int = Field(default=1, ge=1, le=MAX_WINDOW)
    padding: Padding = "valid"
    activation: Activation = "relu"


class MaxPooling2DLayer(_Strict):
    pool_size: int = Field(default=2, ge=1, le=MAX_WINDOW)


class DropoutLayer(_Strict):
    rate: float = Field(ge=0, lt=1)


class BatchNormalizationLayer(_Strict):
    pass


class FlattenLayer(_Strict):
    pass


LAYER_KINDS = ("dense", "conv2d", "max_pooling2d", "dropout", "batch_normalization", "flatten")


class LayerSpec(_Strict):
    """One layer of model.layers: exactly one kind with its settings, e.g. {"conv2d": {"filters": 16}}.
    A kind given no settings (YAML's `- flatten:`) takes its defaults."""

    dense: DenseLayer | None = None
    conv2d: Conv2DLayer | None = None
    max_pooling2d: MaxPooling2DLayer | None = None
    dropout: DropoutLayer | None = None
    batch_normalization: BatchNormalizationLayer | None = None
    flatten: FlattenLayer | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_settings_is_defaults(cls, data: Any) -> Any:
        return {k: {} if v is None else v for k, v in data.items()} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> LayerSpec:
        given = [k for k in LAYER_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a layer is exactly one of {', '.join(LAYER_KINDS)}, e.g. {{dense: {{units: 32}}}}; "
                             f"got {' and '.join(given) or 'none'}")
        return self

    @model_serializer(mode="wrap")
    def _only_its_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def kind(self) -> str:
        return next(k for k in LAYER_KINDS if getattr(self, k) is not None)

    @property
    def settings(self) -> BaseModel:
        found: BaseModel = getattr(self, self.kind)
        return found
