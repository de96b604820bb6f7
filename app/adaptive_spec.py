"""The spec keys of adaptive sweeps and the rules that tie them together.

    method: random                 # grid (default) | random | tpe
    search: {optimizer.learning_rate: {loguniform: [0.0001, 0.1]}, model.hidden: {choice: [[16], [32]]},
             epochs: {int: [5, 20]}, params.dropout: {uniform: [0.0, 0.5]}}
    max_configs: 12                # random and tpe: how many configs to try
    search_seed: 7                 # same seed, same configs (random), same first configs (tpe)
    replicates: {min: 3, max: 12, step: 3}   # adaptive seeds (an integer keeps its meaning)
    race: {metric: val_accuracy, alpha: 0.05}
    prune: {method: ci, metric: val_accuracy, min_epochs: 2}

The models here hold one key each; `check_adaptive` (called by app.spec.SweepSpec's validator) checks the
combinations, each refusal naming its field (a 422 at `search`, `race`, `max_configs`, ...).
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.listed_values import check_listed_values
from app.metrics import KEY_CHARS, PRIMARY_KEY
from app.text import encodable, not_blank

if TYPE_CHECKING:
    from app.spec import SweepSpec

Method = Literal["grid", "random", "tpe"]
PruneMethod = Literal["ci", "median", "asha"]
SEARCH_METHODS: frozenset[str] = frozenset({"random", "tpe"})
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
MAX_SEARCH_PATHS = 50
MAX_CHOICES = 1000
MAX_CONFIGS = 10_000
MAX_SEARCH_SEED = 2**32 - 1
BOUND = 1e15  # |lo|, |hi| of a float distribution: a sampler's arithmetic stays finite


def _metric_key(value: str) -> str:
    if not encodable(value) or "\x00" in value:
        raise ValueError("a metric key is text without NUL or lone surrogates")
    return not_blank(value) or ""


MetricKey = Annotated[str, Field(min_length=1, max_length=KEY_CHARS), AfterValidator(_metric_key)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)


FloatBounds = tuple[Annotated[float, Field(ge=-BOUND, le=BOUND)], Annotated[float, Field(ge=-BOUND, le=BOUND)]]
IntBounds = tuple[Annotated[builtins.int, Field(ge=-(2**53), le=2**53)],
                  Annotated[builtins.int, Field(ge=-(2**53), le=2**53)]]


class Distribution(_Strict):
    """Exactly one of: {loguniform: [lo, hi]} (0 < lo < hi), {uniform: [lo, hi]} (lo < hi),
    {int: [lo, hi]} (integers lo..hi, both included, lo < hi), {choice: [v1, v2, ...]} (distinct values)."""

    loguniform: FloatBounds | None = None
    uniform: FloatBounds | None = None
    integer: IntBounds | None = Field(default=None, alias="int")
    choice: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)

    @field_validator("loguniform", "uniform", "integer")
    @classmethod
    def _lo_below_hi(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"lo must be below hi, got [{value[0]}, {value[1]}]")
        return value

    @field_validator("loguniform")
    @classmethod
    def _positive(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] <= 0:
            raise ValueError(f"loguniform needs 0 < lo, got lo = {value[0]}")
        return value

    @field_validator("choice")
    @classmethod
    def _distinct(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            check_listed_values(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _known_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and (len(data) != 1 or next(iter(data)) not in DISTRIBUTIONS):
            raise ValueError(f"a distribution is one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [0.0001, 0.1]}}"
                             f" or {{choice: [[16], [32]]}}; got {', '.join(map(str, data)) or 'nothing'}")
        return data

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, "integer" if k == "int" else k) is not None)

    def extremes(self) -> list[Any]:
        """The values that bound what it draws (both ends, or every choice): each is checked at submit."""
        if self.choice is not None:
            return list(self.choice)
        bounds = self.loguniform or self.uniform or self.integer
        assert bounds is not None
        return list(bounds)

    def size(self) -> float:
        """How many distinct values it can draw (inf for a float range)."""
        if self.choice is not None:
            return len(self.choice)
        if self.integer is not None:
            return self.integer[1] - self.integer[0] + 1
        return math.inf


class AdaptiveReplicates(_Strict):
    """Adaptive seeds: every config starts with `min` seeds; while its race is unsettled it gets `step`
    more after each round, up to `max`."""

    min: builtins.int = Field(ge=2, le=1000)
    max: builtins.int = Field(ge=2, le=1000)
    step: builtins.int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _min_to_max(self) -> AdaptiveReplicates:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        return self


class Race(_Strict):
    """Settle every config against the best on the final `metric` (a family error rate of `alpha`
    over every look of the race)."""

    metric: MetricKey = PRIMARY_KEY
    alpha: float = Field(default=0.05, gt=0, le=0.5)


class Prune(_Strict):
    """Stop a config's runs early (status pruned) once it cannot win: from epoch `min_epochs` on, at
    each epoch, by `method` on the per-epoch `metric`."""

    method: PruneMethod = "ci"
    metric: MetricKey = PRIMARY_KEY
    min_epochs: builtins.int = Field(default=1, ge=1, le=1000)
    alpha: float = Field(default=0.05, gt=0, le=0.5, description="ci: the error rate of its bounds")


def field_error(model: str, loc: tuple[str | builtins.int, ...], message: str, value: Any) -> ValidationError:
    """A validation error at LOC (what a 422's `fields` names) from a model's after-validator."""
    error = PydanticCustomError("invalid_combination", message)
    return ValidationError.from_exception_data(model, [InitErrorDetails(type=error, loc=loc, input=value)])


def read_replicates(model: str, data: Any) -> Any:
    """DATA (a spec before validation) with a {min, max, step} `replicates` validated as
    AdaptiveReplicates, its errors at replicates.min (not at a branch of the int-or-mapping union)."""
    if isinstance(data, dict) and isinstance(data.get("replicates"), dict):
        try:
            return {**data, "replicates": AdaptiveReplicates.model_validate(data["replicates"])}
        except ValidationError as exc:
            errors = [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"].removeprefix("Value error, ")),
                                       loc=("replicates", *e["loc"]), input=e["input"]) for e in exc.errors()]
            raise ValidationError.from_exception_data(model, errors) from None
    return data


def check_adaptive(spec: SweepSpec, check_path: Callable[[str, dict[str, Any]], None],
                   check_values: Callable[[dict[str, Any]], str | None], max_runs: builtins.int) -> None:
    """The rules between the adaptive keys; raises a ValidationError at the key that breaks one.
    CHECK_PATH(path, base) raises ValueError for a path a grid could not name either; CHECK_VALUES
    ({path: value}) answers why those values make the config invalid (None: they do not)."""
    name = type(spec).__name__

    def refuse(loc: str, message: str, value: Any = None) -> ValidationError:
        return field_error(name, tuple(loc.split(".", 1)) if loc.startswith("search.") else (loc,), message, value)

    searching = spec.method in SEARCH_METHODS
    if not searching:
        for key in ("search", "max_configs", "search_seed"):
            if getattr(spec, key) is not None:
                raise refuse(key, f"{key} is for method random or tpe; this sweep's method is {spec.method} "
                                  "(set method: random or method: tpe, or leave it out)")
    else:
        if not spec.search:
            raise refuse("search", f"method {spec.method} needs a search block: a distribution per dotted path, e.g. "
                                   "{optimizer.learning_rate: {loguniform: [0.0001, 0.1]}}")
        if spec.grid:
            raise refuse("grid", f"method {spec.method} draws its configs from search; give the values as "
                                 "search: {PATH: {choice: [...]}} instead of a grid")
        if spec.max_configs is None:
            raise refuse("max_configs", f"method {spec.method} needs max_configs: how many configs to try")
        if len(spec.search) > MAX_SEARCH_PATHS:
            raise refuse("search", f"at most {MAX_SEARCH_PATHS} paths")
        base = spec.base_dict()
        for path, dist in spec.search.items():
            try:
                check_path(path, base)
            except ValueError as exc:
                raise refuse(f"search.{path}", str(exc).replace("grid:", "search:", 1), path) from None
            for value in dist.extremes():
                why = check_values({path: value})
                if why is not None:
                    raise refuse(f"search.{path}", f"the value {json.dumps(value)} makes {why}", value)
        space = math.prod(d.size() for d in spec.search.values())
        if space < spec.max_configs:
            raise refuse("max_configs", f"the search space holds only {int(space)} distinct configs; "
                                        f"max_configs is {spec.max_configs}", spec.max_configs)
    adaptive = isinstance(spec.replicates, AdaptiveReplicates)
    if spec.race is not None and not adaptive:
        raise refuse("race", "race needs adaptive replicates: replicates: {min: 3, max: 12, step: 3}")
    if adaptive and spec.race is None:
        raise refuse("replicates", "adaptive replicates ({min, max, step}) need a race block that decides which "
                                   "configs get more seeds: race: {metric: val_accuracy, alpha: 0.05}")
    runs = spec.run_count()
    if runs > max_runs:
        loc = "max_configs" if searching else ("replicates" if adaptive else "grid")
        raise refuse(loc, f"the sweep may grow to {runs} runs; at most {max_runs} are allowed", runs)
    if spec.prune is not None:
        most = spec.max_epochs()
        if spec.prune.min_epochs >= most:
            raise refuse("prune", f"prune.min_epochs ({spec.prune.min_epochs}) must be below the sweep's epochs "
                                  f"({most}): pruning starts after min_epochs", spec.prune.min_epochs)
