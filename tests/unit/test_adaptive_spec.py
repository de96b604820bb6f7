"""The adaptive spec keys (method, search, max_configs, search_seed, replicates {min, max, step}, race,
prune): what each accepts, the 422 each bad combination gives at its field, and that grid specs keep
their meaning and their stored shape."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml

from app.adaptive_spec import AdaptiveReplicates
from app.errors import InvalidSpec
from app.metrics import KEY_CHARS
from app.services.search import random_params, startup_trials
from app.services.sweeps import parse_spec
from app.spec import MAX_RUNS_PER_SWEEP, SweepSpec

LR = {"optimizer.learning_rate": {"loguniform": [0.0001, 0.1]}}


def spec(**data: Any) -> SweepSpec:
    return parse_spec({"name": "s", **data})


def refused(**data: Any) -> dict[str, str]:
    """The first failing field of the spec: {"loc", "msg"}."""
    with pytest.raises(InvalidSpec) as caught:
        spec(**data)
    assert caught.value.fields
    return caught.value.fields[0]


def test_the_issue_example_validates() -> None:
    s = spec(method="random", max_configs=12, search_seed=7, epochs=20,
             search={**LR, "model.hidden": {"choice": [[16], [32], [64]]}, "epochs": {"int": [5, 20]}},
             replicates={"min": 3, "max": 12, "step": 3}, race={"metric": "val_accuracy", "alpha": 0.05},
             prune={"method": "ci", "metric": "val_accuracy", "min_epochs": 2})
    assert s.searching and s.adaptive
    assert isinstance(s.replicates, AdaptiveReplicates) and (s.replicates.min, s.replicates.max) == (3, 12)
    assert s.seed_list() == [0, 1, 2] and s.max_replicates() == 12
    assert s.run_count() == 12 * 12  # max_configs at max replicates
    assert s.max_epochs() == 20
    assert s.search is not None and s.search["epochs"].kind == "int" and s.search["epochs"].integer == (5, 20)


def test_grid_specs_keep_their_meaning_and_stored_shape() -> None:
    s = spec(grid={"model.hidden": [[8], [16]]}, replicates=3)
    assert not s.adaptive and s.method == "grid" and s.run_count() == 6 and s.seed_list() == [0, 1, 2]
    dumped = s.model_dump(mode="json")  # also without exclude_none: the new keys stay out at their defaults
    assert not {"method", "search", "max_configs", "search_seed", "race", "prune"} & set(dumped)
    assert "method" not in s.filled_in()


@pytest.mark.parametrize(("data", "loc", "words"), [
    ({"search": LR}, "search", "method random or tpe"),
    ({"max_configs": 3}, "max_configs", "method random or tpe"),
    ({"search_seed": 3}, "search_seed", "method random or tpe"),
    ({"method": "random", "max_configs": 3}, "search", "needs a search block"),
    ({"method": "tpe", "search": LR}, "max_configs", "needs max_configs"),
    ({"method": "random", "search": LR, "max_configs": 3, "grid": {"epochs": [1, 2]}}, "grid", "instead of a grid"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"loguniform": [0.1, 0.1]}}, "max_configs": 3},
     "search.optimizer.learning_rate.loguniform", "lo must be below hi"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"uniform": [0.2, 0.1]}}, "max_configs": 3},
     "search.optimizer.learning_rate.uniform", "lo must be below hi"),
    ({"method": "random", "search": {"epochs": {"int": [5, 5]}}, "max_configs": 1}, "search.epochs.int",
     "lo must be below hi"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"loguniform": [0, 0.1]}}, "max_configs": 3},
     "search.optimizer.learning_rate.loguniform", "0 < lo"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"loguniform": [-1, 0.1]}}, "max_configs": 3},
     "search.optimizer.learning_rate.loguniform", "0 < lo"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"uniform": [0, 0.1]}}, "max_configs": 3},
     "search.optimizer.learning_rate", "greater than 0"),
    ({"method": "random", "search": {"epochs": {"int": [0, 5]}}, "max_configs": 3}, "search.epochs",
     "epochs invalid"),
    ({"method": "random", "search": {"model.hidden": {"choice": [[8], [8]]}}, "max_configs": 1},
     "search.model.hidden.choice", "listed twice"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"choice": [0.1, math.nan]}}, "max_configs": 1},
     "search.optimizer.learning_rate.choice", "nan is not a finite number"),
    ({"method": "random", "search": {"model.hidden": {"choice": []}}, "max_configs": 1},
     "search.model.hidden.choice", "at least 1"),
    ({"method": "random", "search": {"model.hidden": {"choice": [[8], [0]]}}, "max_configs": 1},
     "search.model.hidden", "model.hidden.0 invalid"),
    ({"method": "random", "search": {"model.hidden": {"normal": [0, 1]}}, "max_configs": 1},
     "search.model.hidden", "a distribution is one of"),
    ({"method": "random", "search": {"model.hidden": {"choice": [[8]], "int": [1, 2]}}, "max_configs": 1},
     "search.model.hidden", "a distribution is one of"),
    ({"method": "random", "search": {"no.such.path": {"int": [1, 2]}}, "max_configs": 1}, "search.no.such.path",
     "unknown path"),
    ({"method": "random", "search": {"model.hidden": {"choice": [[8], [16]]}}, "max_configs": 3}, "max_configs",
     "only 2 distinct configs"),
    ({"method": "random", "search": {"optimizer.learning_rate": {"uniform": [0.1, math.inf]}}, "max_configs": 3},
     "search.optimizer.learning_rate.uniform.1", "finite"),
    ({"method": "random", "search": LR, "max_configs": MAX_RUNS_PER_SWEEP, "replicates": 2}, "max_configs",
     f"at most {MAX_RUNS_PER_SWEEP}"),
    ({"method": "random", "search": LR, "max_configs": 5000, "replicates": {"min": 2, "max": 3},
      "race": {"metric": "val_accuracy"}}, "max_configs", "15000 runs"),
    ({"method": "random", "search": LR, "max_configs": 0}, "max_configs", "greater than or equal to 1"),
    ({"method": "bayes"}, "method", "'grid', 'random' or 'tpe'"),
    ({"race": {"metric": "val_accuracy"}}, "race", "needs adaptive replicates"),
    ({"race": {"metric": "val_accuracy"}, "replicates": 3}, "race", "needs adaptive replicates"),
    ({"replicates": {"min": 3, "max": 9, "step": 3}}, "replicates", "need a race block"),
    ({"replicates": {"min": 5, "max": 3}, "race": {}}, "replicates", "at least min"),
    ({"replicates": {"min": 1, "max": 3}, "race": {}}, "replicates.min", "greater than or equal"),
    ({"replicates": {"min": 2, "max": 3, "step": 0}, "race": {}}, "replicates.step",
     "greater than or equal"),
    ({"replicates": {"min": 2, "max": 3, "every": 1}, "race": {}}, "replicates.every",
     "Extra inputs"),
    ({"replicates": {"min": 2, "max": 3}, "race": {"alpha": 0}}, "race.alpha", "greater than 0"),
    ({"replicates": {"min": 2, "max": 3}, "race": {"alpha": 0.9}}, "race.alpha", "less than or equal"),
    ({"replicates": {"min": 2, "max": 3}, "race": {"metric": "  "}}, "race.metric", "blank"),
    ({"replicates": {"min": 2, "max": 1000}, "race": {}, "grid": {"epochs": list(range(1, 12))}}, "replicates",
     "11000 runs"),
    ({"prune": {"method": "hyperband"}}, "prune.method", "'ci', 'median' or 'asha'"),
    ({"prune": {"min_epochs": 0}}, "prune.min_epochs", "greater than or equal to 1"),
    ({"prune": {"min_epochs": 10}, "epochs": 10}, "prune", "must be below the sweep's epochs"),
    ({"prune": {"metric": "x" * (KEY_CHARS + 1)}}, "prune.metric", f"at most {KEY_CHARS}"),
])
def test_bad_combinations_name_their_field(data: dict[str, Any], loc: str, words: str) -> None:
    field = refused(**data)
    assert field["loc"] == loc, field
    assert words in field["msg"], field


def test_search_paths_reach_layers_and_params_as_grid_paths_do() -> None:
    s = spec(method="random", max_configs=4, params={"dropout": 0.1},
             model={"layers": [{"dense": {"units": 8}}]},
             search={"params.dropout": {"uniform": [0.0, 0.5]}, "model.layers.0.dense.units": {"int": [4, 64]}})
    cfg = s.config_for(random_params(s, 0))
    assert cfg.train.params is not None and 0.0 <= cfg.train.params["dropout"] <= 0.5
    assert cfg.train.model.layers is not None and cfg.train.model.layers[0].settings.units in range(4, 65)  # type: ignore[attr-defined]
    assert refused(method="random", max_configs=4, search={"params.dropout": {"uniform": [0.0, 0.5]}})["loc"] \
        == "search.params.dropout"  # the spec has no params.dropout to vary


def test_a_prune_bound_counts_searched_and_gridded_epochs() -> None:
    assert spec(prune={"min_epochs": 4}, epochs=2, grid={"epochs": [2, 5]}).max_epochs() == 5
    assert spec(method="random", max_configs=2, epochs=2, search={"epochs": {"int": [2, 9]}},
                prune={"min_epochs": 8}).max_epochs() == 9


def test_stored_spec_reads_back_the_same() -> None:
    """What create_sweep stores (a search: filled_in) and what the new-sweep page's YAML holds validate
    again to the same spec."""
    s = spec(method="tpe", max_configs=6, search_seed=3, replicates={"min": 2, "max": 6, "step": 2},
             race={"metric": "val_loss"}, prune={"method": "asha", "metric": "val_loss"},
             search={**LR, "epochs": {"int": [2, 4]}, "model.hidden": {"choice": [[8], [32]]}})
    stored = s.filled_in()
    assert stored["search"]["epochs"] == {"int": [2, 4]}  # the alias, never the field's Python name
    assert stored["replicates"] == {"min": 2, "max": 6, "step": 2}
    again = parse_spec(stored)
    assert again.model_dump(mode="json") == s.model_dump(mode="json")
    assert parse_spec(yaml.safe_load(yaml.safe_dump(stored))).model_dump(mode="json") == s.model_dump(mode="json")


def test_random_draws_follow_the_documented_generator() -> None:
    """Config k's values: numpy's default_rng([search_seed, k, attempt]), path by path in the spec's
    order: loguniform as exp(uniform(log lo, log hi)), int both ends included, choice by index."""
    s = spec(method="random", max_configs=20, search_seed=11,
             search={**LR, "epochs": {"int": [5, 20]}, "model.hidden": {"choice": [[16], [32], [64]]},
                     "batch_size": {"int": [8, 9]}})
    for k in range(20):
        rng = np.random.default_rng([11, k, 0])
        lr = math.exp(rng.uniform(math.log(0.0001), math.log(0.1)))
        epochs = int(rng.integers(5, 21))
        hidden = [[16], [32], [64]][int(rng.integers(3))]
        batch = int(rng.integers(8, 10))
        assert random_params(s, k) == {"optimizer.learning_rate": lr, "epochs": epochs, "model.hidden": hidden,
                                       "batch_size": batch}
    draws = [random_params(s, k) for k in range(200)]
    assert {d["batch_size"] for d in draws} == {8, 9} and {d["epochs"] for d in draws} == set(range(5, 21))
    assert all(0.0001 <= d["optimizer.learning_rate"] <= 0.1 for d in draws)
    assert random_params(s, 3) != random_params(s, 3, attempt=1)


def test_tpe_startup_is_optunas_default_at_most_half_the_configs() -> None:
    def tpe(n: int) -> SweepSpec:
        return spec(method="tpe", max_configs=n, search=LR)

    assert [startup_trials(tpe(n)) for n in (1, 2, 6, 12, 20, 100)] == [1, 1, 3, 6, 10, 10]


def test_the_adaptive_study_preset_asks_the_studys_questions_of_the_same_sweeps() -> None:
    from app.services.presets import preset_documents

    fixed = [parse_spec(d) for d in preset_documents("mnist-study")]
    adaptive = [parse_spec(d) for d in preset_documents("mnist-study-adaptive")]
    assert [s.name for s in adaptive] == [s.name for s in fixed]
    assert {s.study for s in adaptive} == {"mnist-study-adaptive"}
    asked = [q.model_dump() for s in adaptive for q in s.questions or []]
    assert asked == [q.model_dump() for s in fixed for q in s.questions or []] and len(asked) == 5
    for a, f in zip(adaptive, fixed, strict=True):
        assert [c.train for c in a.expand()] == [c.train for c in f.expand()]  # the same configs
        if len(f.combinations()) > 1:  # rivals: seeds race from 3 to 20, hopeless configs are pruned
            assert a.replicates == AdaptiveReplicates(min=3, max=20, step=3) and a.race is not None
            assert a.prune is not None and a.prune.method == "ci" and a.prune.min_epochs == 2
        else:
            assert a.replicates == f.replicates and a.race is None and a.prune is None
