"""TrainSpec, one config: the dataset, model, loss, optimizer and training length of one run (all but its seed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from app.spec.model import ModelSpec
from app.spec.strict import _Strict
from app.spec.user_code import ProgramName, check_params

MAX_EPOCHS = 1000

# A built-in (app.datasets.BUILTIN) or any <name>.npz in SWEEPLAB_DATA_DIR: checked against the data at submit.
Dataset = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="mnist, fashion_mnist, cifar10, or NAME of a NAME.npz in the data folder")]
Loss = Literal["sparse_categorical_crossentropy", "mse"]
OptimizerName = Literal["sgd", "adam", "rmsprop"]

# Keras' default learning rates, used when a spec leaves it out.
DEFAULT_LEARNING_RATE: dict[str, float] = {"sgd": 0.01, "adam": 0.001, "rmsprop": 0.001}


class Limit(_Strict):
    """Use only the first `train` training and `test` test examples (a quick look)."""

    train: int | None = Field(default=None, ge=1, le=10_000_000)
    test: int | None = Field(default=None, ge=1, le=10_000_000)


class OptimizerSpec(_Strict):
    """An optimizer and its learning rate: Keras' default for the optimizer when the spec gives none."""

    name: OptimizerName = "adam"
    learning_rate: float | None = Field(default=None, gt=0, le=100)
    _rate_chosen: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _default_rate(self) -> OptimizerSpec:
        self._rate_chosen = "learning_rate" in self.model_fields_set
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.name]
        return self

    @property
    def rate_chosen(self) -> bool:
        """Whether the spec named a learning rate; if not, each optimizer a grid sweeps gets its own default."""
        return self._rate_chosen


# Fields added after configs were first hashed: left out of a dump while at their default, so that
# every config that does not use them keeps its stored key (configs.key, content_key).
OMITTED_AT_DEFAULT: dict[str, Any] = {"program": None, "params": None}
# The adaptive keys of a sweep (app.adaptive_spec), likewise left out of a dump while at their default.
OMITTED_AT_DEFAULT.update({"method": "grid", "search": None, "max_configs": None, "search_seed": None,
                           "race": None, "prune": None})


class TrainSpec(_Strict):
    """Everything one training run needs except its seed: a config."""

    dataset: Dataset = "mnist"
    limit: Limit | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: Loss = "sparse_categorical_crossentropy"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    params: dict[str, Any] | None = Field(
        default=None, description="free-form JSON for a model builder or program (sweepable as params.NAME)")
    program: ProgramName = Field(
        default=None, description="train with this program of the workers' programs folder instead of the built-in "
                                  "trainer: the run's config (JSON), seed and epochs reach it in its environment")

    @field_validator("params")
    @classmethod
    def _bounded_params(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_params(value)

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, default in OMITTED_AT_DEFAULT.items():
            if name in data and data[name] == default:
                del data[name]
        return data
