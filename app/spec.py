"""The sweep spec (what a user submits) and its expansion into configs and runs.

A spec describes one model and training set-up; `grid` names dotted paths into the spec with the
values to try. Every grid combination is a config; every (config, seed) is a run.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.text import encodable, first_unencodable, not_blank

MAX_RUNS_PER_SWEEP = 10_000
MAX_HIDDEN_LAYERS = 10
MAX_WIDTH = 8192
MAX_EPOCHS = 1000
MAX_SEEDS = 1000
MAX_GRID_VALUES = 1000

Dataset = Literal["mnist", "fashion_mnist"]
Activation = Literal["relu", "sigmoid", "tanh", "linear"]
OutputActivation = Literal["softmax", "relu", "sigmoid", "linear"]
Loss = Literal["sparse_categorical_crossentropy", "mse"]
OptimizerName = Literal["sgd", "adam", "rmsprop"]

# Keras' default learning rates, used when a spec leaves it out.
DEFAULT_LEARNING_RATE: dict[str, float] = {"sgd": 0.01, "adam": 0.001, "rmsprop": 0.001}

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
SURROGATE_MESSAGE = "text with a lone surrogate character cannot be stored"


def storable(value: str) -> bool:
    """Whether both databases store VALUE alike: UTF-8 encodable and no NUL (PostgreSQL's text
    refuses NUL where SQLite keeps it)."""
    return encodable(value) and "\x00" not in value


def _check_storable(value: str) -> str:
    """Unstorable text is a 422 at its field instead of a driver error (a 500, or a broken stream)."""
    if not encodable(value):
        raise ValueError(SURROGATE_MESSAGE)
    if "\x00" in value:
        raise ValueError("text with a NUL character cannot be stored")
    return value


# A string that reaches a text column or a query on one (names, filters, metric keys).
StoredText = Annotated[str, AfterValidator(_check_storable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Limit(_Strict):
    """Use only the first `train` training and `test` test examples (a quick look)."""

    train: int | None = Field(default=None, ge=1, le=10_000_000)
    test: int | None = Field(default=None, ge=1, le=10_000_000)


class ModelSpec(_Strict):
    """Flatten(28x28) -> Dense(w, activation) for w in hidden -> Dense(10, output_activation)."""

    hidden: list[Width] = Field(default_factory=lambda: [32], max_length=MAX_HIDDEN_LAYERS)
    activation: Activation = "relu"
    output_activation: OutputActivation = "softmax"


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


PROGRAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
PROGRAM_NAME_RULE = ("a program is named by its file in a worker's programs folder (SWEEPLAB_PROGRAMS_DIR) without "
                     "'.py': a letter or _, then letters, digits, _ or -, at most 100 characters; no path")


def _check_program_name(value: str | None) -> str | None:
    if value is not None and not PROGRAM_NAME.fullmatch(value):
        raise ValueError(PROGRAM_NAME_RULE)
    return value


# A training program a worker offers (worker.programs): only its name ever travels, never a path or command.
ProgramName = Annotated[str | None, AfterValidator(_check_program_name)]
# Fields added after configs were first hashed: left out of a dump while at their default, so that
# every config that does not use them keeps its stored key (configs.key, content_key).
OMITTED_AT_DEFAULT: dict[str, Any] = {"program": None}


class TrainSpec(_Strict):
    """Everything one training run needs except its seed: a config."""

    dataset: Dataset = "mnist"
    limit: Limit | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: Loss = "sparse_categorical_crossentropy"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    program: ProgramName = Field(
        default=None, description="train with this program of the workers' programs folder instead of the built-in "
                                  "trainer: the run's config (JSON), seed and epochs reach it in its environment")

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, default in OMITTED_AT_DEFAULT.items():
            if name in data and data[name] == default:
                del data[name]
        return data


MAX_QUESTIONS = 20
MAX_QUESTION_SWEEPS = 20
SweepName = Annotated[StoredText, Field(min_length=1, max_length=200)]


class Question(_Strict):
    """A question of the study, answered on its study page: do the configs of the sweeps named in
    `compare` differ in their final `metric` beyond seed noise? One name compares the configs of
    that (grid) sweep with each other. Names are sweeps of the same study, resolved when the study
    page is read (the study's sweeps arrive one spec at a time)."""

    ask: StoredText = Field(min_length=1, max_length=300)
    compare: list[SweepName] = Field(min_length=1, max_length=MAX_QUESTION_SWEEPS)
    metric: StoredText | None = Field(default=None, min_length=1, max_length=100,
                                      description="a metric key; default the primary metric")

    @field_validator("ask", "metric")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return not_blank(value)

    @field_validator("compare")
    @classmethod
    def _distinct_names(cls, value: list[str]) -> list[str]:
        names = [not_blank(v) or "" for v in value]
        if len(set(names)) != len(names):
            raise ValueError("each sweep may be named once")
        return names


class SweepSpec(TrainSpec):
    """A sweep: a base config, the seeds to replicate over and the grid of settings to vary."""

    name: StoredText = Field(min_length=1, max_length=200)
    study: StoredText | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    replicates: int | None = Field(default=None, ge=1, le=MAX_SEEDS)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(default=None, max_length=MAX_SEEDS)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    questions: list[Question] | None = Field(default=None, max_length=MAX_QUESTIONS,
                                             description="questions of the study its study page answers")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unstorable(cls, data: Any) -> Any:
        """Refuse text neither database can store (a lone surrogate, JSON "\\ud800") anywhere in the
        spec, keys included, with the error at that field: unchecked, it reaches the driver as a 500."""
        where = first_unencodable(data)
        if where is not None:
            error = PydanticCustomError("unstorable_text", SURROGATE_MESSAGE)
            loc = tuple(where.split("."))
            raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(type=error, loc=loc, input=data)])
        return data

    @field_validator("name", "study")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return not_blank(value)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one seed")
            if len(set(value)) != len(value):
                raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _check_seeds_and_grid(self) -> SweepSpec:
        if self.replicates is not None and self.seeds is not None:
            raise ValueError("give either replicates or seeds, not both")
        if self.replicates is None and self.seeds is None:
            self.replicates = 1
        for path, values in self.grid.items():
            _check_grid_axis(path, values)
        n = len(self.seed_list()) * math.prod(len(v) for v in self.grid.values())
        if n > MAX_RUNS_PER_SWEEP:
            raise ValueError(f"the sweep expands to {n} runs; at most {MAX_RUNS_PER_SWEEP} are allowed")
        # Validate every combination now, so a bad grid value is reported at submit time.
        for combo in self.combinations():
            try:
                TrainSpec.model_validate(_apply(self.base_dict(), combo))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"grid value {combo} makes {where} invalid: {err['msg']}") from None
        return self

    def seed_list(self) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(self.replicates or 1))

    def base_dict(self) -> dict[str, Any]:
        """The spec's own training settings as a plain dict (no name, seeds or grid)."""
        out = self.model_dump(include=set(TrainSpec.model_fields), mode="json")
        if not self.optimizer.rate_chosen:
            del out["optimizer"]["learning_rate"]  # each swept optimizer then gets its own default
        return out

    def filled_in(self) -> dict[str, Any]:
        """The spec as JSON with its defaults filled in (what POST /api/sweeps/validate answers),
        but no learning rate the spec left out: a swept optimizer keeps its own default. Its name
        comes first, as in a spec file."""
        out = self.model_dump(mode="json", exclude_none=True)
        if not self.optimizer.rate_chosen:
            del out["optimizer"]["learning_rate"]
        first: dict[str, Any] = {k: out.pop(k) for k in ("name", "study", "description") if k in out}
        return first | out

    def combinations(self) -> list[dict[str, Any]]:
        """Grid combinations in a stable order: each is {dotted path: value}."""
        if not self.grid:
            return [{}]
        paths = list(self.grid)
        return [dict(zip(paths, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def expand(self) -> list[ExpandedConfig]:
        """Every config of the sweep with its resolved training settings."""
        out = []
        for combo in self.combinations():
            train = TrainSpec.model_validate(_apply(self.base_dict(), combo))
            out.append(ExpandedConfig(params=combo, train=train))
        return out

    def run_count(self) -> int:
        return len(self.seed_list()) * len(self.combinations())


GRID_PATHS: frozenset[str] = frozenset(
    {
        "dataset",
        "loss",
        "epochs",
        "batch_size",
        "limit.train",
        "limit.test",
        "model.hidden",
        "model.activation",
        "model.output_activation",
        "optimizer.name",
        "optimizer.learning_rate",
    }
)


def _check_grid_axis(path: str, values: list[Any]) -> None:
    if path not in GRID_PATHS:
        raise ValueError(f"grid: unknown path {path!r}; choose from {', '.join(sorted(GRID_PATHS))}")
    if not values:
        raise ValueError(f"grid.{path}: give at least one value")
    if len(values) > MAX_GRID_VALUES:
        raise ValueError(f"grid.{path}: at most {MAX_GRID_VALUES} values")
    seen = set()
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"grid.{path}: {v} is not a finite number")
        key = json.dumps(v, sort_keys=True)
        if key in seen:
            raise ValueError(f"grid.{path}: value {v!r} is listed twice")
        seen.add(key)


def _apply(base: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, value in combo.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return out


@dataclass(frozen=True)
class ExpandedConfig:
    """One grid combination: the swept values and the full training settings they give."""

    params: dict[str, Any]
    train: TrainSpec

    @property
    def key(self) -> str:
        """A content hash: equal settings give equal keys, across sweeps."""
        return config_key(self.train)


def config_key(train: TrainSpec) -> str:
    """The key of a queued config: the content key of its full training settings."""
    return content_key(train.model_dump(mode="json"))


def content_key(data: Any) -> str:
    """A content hash of JSON-able DATA (key order ignored): configs with equal settings share it,
    queued and external alike, so their replicates group. Stored in configs.key: never change it."""
    blob = json.dumps(data, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _SpecDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing lists on one line as spec files do (`hidden: [32, 64]`,
    `model.hidden: [[8], [16]]`) and mappings as blocks."""


def _flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_SpecDumper.add_representer(list, _flow_list)


def spec_yaml(data: dict[str, Any]) -> str:
    """A spec (as JSON) as YAML that `sweeplab submit` and POST /api/sweeps read back unchanged."""
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True)


def describe_params(params: dict[str, Any]) -> str:
    """A short human label for a config, e.g. 'hidden=[32, 64] · lr=0.01'."""
    if not params:
        return "base"
    short = {"model.hidden": "hidden", "optimizer.learning_rate": "lr", "optimizer.name": "optimizer"}
    return " · ".join(f"{short.get(k, k.split('.')[-1])}={json.dumps(v)}" for k, v in params.items())
