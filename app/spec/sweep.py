"""SweepSpec, what a user submits: a base config, the seeds to replicate over, the grid (or search) of settings
to vary and the study's questions; its validator checks every combination at submit."""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
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
from app.spec.configs import ExpandedConfig
from app.spec.grid import _apply, _check_grid_axis
from app.spec.questions import MAX_QUESTIONS, Question
from app.spec.stored_text import SURROGATE_MESSAGE, StoredText
from app.spec.train import TrainSpec
from app.text import first_unencodable, not_blank

MAX_RUNS_PER_SWEEP = 10_000
MAX_SEEDS = 1000


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

