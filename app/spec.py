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

from app.adaptive_spec import (
    SEARCH_METHODS,
    AdaptiveReplicates,
    Distribution,
    Method,
    Prune,
    Race,
    check_adaptive,
    read_replicates,
)
from app.text import encodable, first_unencodable, not_blank

MAX_RUNS_PER_SWEEP = 10_000
MAX_HIDDEN_LAYERS = 10
MAX_WIDTH = 8192
MAX_EPOCHS = 1000
MAX_SEEDS = 1000
MAX_GRID_VALUES = 1000

# A built-in (app.datasets.BUILTIN) or any <name>.npz in SWEEPLAB_DATA_DIR: checked against the data at submit.
Dataset = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="mnist, fashion_mnist, cifar10, or NAME of a NAME.npz in the data folder")]
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


MAX_LAYERS = 50
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


MAX_PARAMS_CHARS = 20_000
MAX_PARAMS_DEPTH = 10


def check_params(value: dict[str, Any]) -> dict[str, Any]:
    """`params` is free-form JSON, bounded: text keys, finite numbers, at most MAX_PARAMS_CHARS as JSON
    and MAX_PARAMS_DEPTH deep."""

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_PARAMS_DEPTH:
            raise ValueError(f"params nest at most {MAX_PARAMS_DEPTH} levels deep")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValueError(f"params keys are text, not {k!r}")
                walk(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, depth + 1)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"params hold finite numbers only, not {node}")
        elif node is not None and not isinstance(node, (str, int, float, bool)):
            raise ValueError(f"params hold JSON values only, not {type(node).__name__}")

    walk(value, 0)
    if len(json.dumps(value)) > MAX_PARAMS_CHARS:
        raise ValueError(f"params take at most {MAX_PARAMS_CHARS} characters as JSON")
    return value


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
    replicates: Annotated[int, Field(ge=1, le=MAX_SEEDS)] | AdaptiveReplicates | None = Field(
        default=None, description="seeds per config: an integer, or {min, max, step} for adaptive seeds (with race)")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(default=None, max_length=MAX_SEEDS)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    method: Method = Field(default="grid", description="grid: every combination of grid; random, tpe: draw "
                                                       "max_configs configs from search as workers free up")
    search: dict[str, Distribution] | None = Field(default=None, description="random and tpe: a distribution per "
                                                                             "dotted path (as grid paths)")
    max_configs: int | None = Field(default=None, ge=1, le=MAX_RUNS_PER_SWEEP, description="random and tpe: configs "
                                                                                           "to try")
    search_seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="random and tpe: the sampler's "
                                                                                  "seed (default 0)")
    race: Race | None = Field(default=None, description="with adaptive replicates: settle each config against the best")
    prune: Prune | None = Field(default=None, description="stop configs that cannot win early (status pruned)")
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
        return read_replicates(cls.__name__, data)

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
        base = self.base_dict()
        for path, values in self.grid.items():
            _check_grid_axis(path, values, base)
        check_adaptive(self, lambda path, base: _check_grid_axis(path, [None], base), self._why_invalid,
                       MAX_RUNS_PER_SWEEP)
        n = self.run_count()
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

    def _why_invalid(self, combo: dict[str, Any]) -> str | None:
        """Why the values COMBO ({path: value}) make the config invalid; None when they do not."""
        try:
            TrainSpec.model_validate(_apply(self.base_dict(), combo))
        except ValidationError as exc:
            err = exc.errors()[0]
            return f"{'.'.join(str(p) for p in err['loc'])} invalid: {err['msg'].removeprefix('Value error, ')}"
        except ValueError as exc:
            return str(exc)
        return None

    def seed_list(self) -> list[int]:
        """The seeds every config starts with (adaptive replicates: the first `min`)."""
        if self.seeds is not None:
            return list(self.seeds)
        if isinstance(self.replicates, AdaptiveReplicates):
            return list(range(self.replicates.min))
        return list(range(self.replicates or 1))

    @property
    def searching(self) -> bool:
        """Whether configs are drawn from `search` as work frees up (method random or tpe)."""
        return self.method in SEARCH_METHODS

    @property
    def adaptive(self) -> bool:
        """Whether a planner adds configs or seeds after submit (app.services.planner)."""
        return self.searching or self.race is not None

    def max_replicates(self) -> int:
        """The most seeds a config can get: `max` of adaptive replicates, else every seed."""
        if isinstance(self.replicates, AdaptiveReplicates):
            return self.replicates.max
        return len(self.seed_list())

    def max_epochs(self) -> int:
        """The most epochs any config of the sweep can train."""
        found = [self.epochs, *(v for v in self.grid.get("epochs", []) if isinstance(v, int))]
        if self.search and "epochs" in self.search:
            found += [v for v in self.search["epochs"].extremes() if isinstance(v, int)]
        return max(found)

    def config_for(self, params: dict[str, Any]) -> ExpandedConfig:
        """The config that PARAMS ({dotted path: value}, a grid combination or a search draw) make."""
        return ExpandedConfig(params=params, train=TrainSpec.model_validate(_apply(self.base_dict(), params)))

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
        return [self.config_for(combo) for combo in self.combinations()]

    def run_count(self) -> int:
        """The most runs the sweep can have: every config (max_configs of a search) at its most seeds."""
        configs = self.max_configs or 1 if self.searching else len(self.combinations())
        return self.max_replicates() * configs


GRID_PATHS: frozenset[str] = frozenset(
    {
        "dataset",
        "loss",
        "epochs",
        "batch_size",
        "limit.train",
        "limit.test",
        "model.hidden",
        "model.layers",
        "model.builder",
        "model.activation",
        "model.output_activation",
        "optimizer.name",
        "optimizer.learning_rate",
    }
)


# Beyond GRID_PATHS a grid may name any setting the spec has under these: a layer's field by the
# layer's index (model.layers.0.conv2d.filters) or a key of params (params.dropout).
OPEN_GRID_PREFIXES = ("model.layers.", "params.")


def _check_grid_axis(path: str, values: list[Any], base: dict[str, Any]) -> None:
    if path not in GRID_PATHS and not (path.startswith(OPEN_GRID_PREFIXES) and _has_path(base, path)):
        raise ValueError(f"grid: unknown path {path!r}; choose from {', '.join(sorted(GRID_PATHS))}, a field of a "
                         f"layer the spec has (model.layers.0.conv2d.filters) or a key the spec's params have "
                         f"(params.dropout)")
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


def _index(part: str, node: list[Any]) -> int | None:
    """A list index as a path part: canonical digits only ("0", "12"; not "01" or "-1"), in range."""
    if part.isdigit() and str(int(part)) == part and int(part) < len(node):
        return int(part)
    return None


def _has_path(data: Any, path: str) -> bool:
    """Whether PATH names a setting DATA has (a list's items by index)."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and (i := _index(part, node)) is not None:
            node = node[i]
        else:
            return False
    return True


def _apply(base: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, value in combo.items():
        node: Any = out
        parts = path.split(".")
        for n, p in enumerate(parts):
            if isinstance(node, list) and (i := _index(p, node)) is not None:
                key: Any = i
            elif isinstance(node, dict) and (p in node or not path.startswith(OPEN_GRID_PREFIXES)):
                key = p
            else:  # an earlier axis replaced what this one names (model.layers, then model.layers.0....)
                raise ValueError(f"grid: {path} names no setting of the config {combo}")
            if n == len(parts) - 1:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
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
