"""Sweep spec validation and grid expansion."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from app.spec import MAX_RUNS_PER_SWEEP, SweepSpec, config_key, describe_params


def spec(**kw: Any) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", **kw})


def error_locs(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate(data)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


def test_defaults_follow_the_study() -> None:
    s = spec()
    assert s.model.hidden == [32] and s.batch_size == 32 and s.dataset == "mnist"
    assert s.optimizer.name == "adam" and s.optimizer.learning_rate == 0.001
    assert s.seed_list() == [0]


def test_grid_is_the_cartesian_product_with_seeds() -> None:
    s = spec(replicates=3, grid={"model.hidden": [[2], [4]], "optimizer.learning_rate": [0.1, 0.01, 0.001]})
    configs = s.expand()
    assert len(configs) == 6 and s.run_count() == 18
    assert [c.params for c in configs][:2] == [
        {"model.hidden": [2], "optimizer.learning_rate": 0.1},
        {"model.hidden": [2], "optimizer.learning_rate": 0.01},
    ]
    assert configs[5].train.model.hidden == [4] and configs[5].train.optimizer.learning_rate == 0.001
    assert len({c.key for c in configs}) == 6


def test_swept_optimizer_gets_its_own_default_rate_unless_one_was_given() -> None:
    swept = spec(grid={"optimizer.name": ["sgd", "adam"]}).expand()
    assert [c.train.optimizer.learning_rate for c in swept] == [0.01, 0.001]
    fixed = spec(optimizer={"name": "adam", "learning_rate": 0.05}, grid={"optimizer.name": ["sgd", "adam"]})
    assert [c.train.optimizer.learning_rate for c in fixed.expand()] == [0.05, 0.05]


def test_the_spec_says_whether_a_rate_was_chosen_and_its_json_keeps_the_default() -> None:
    """`rate_chosen` is the only record of the choice: the rate itself is filled in either way,
    so stored specs and configs carry a number, and survives a copy and a JSON round trip."""
    default, chosen = spec(), spec(optimizer={"name": "sgd", "learning_rate": 0.05})
    assert (default.optimizer.rate_chosen, chosen.optimizer.rate_chosen) == (False, True)
    assert default.model_dump(mode="json")["optimizer"] == {"name": "adam", "learning_rate": 0.001}
    assert default.model_copy(deep=True).optimizer.rate_chosen is False
    assert SweepSpec.model_validate(default.model_dump(mode="json")).optimizer.rate_chosen is True
    assert "learning_rate" not in default.base_dict()["optimizer"]
    assert default.filled_in()["optimizer"] == {"name": "adam"}
    assert chosen.filled_in()["optimizer"] == {"name": "sgd", "learning_rate": 0.05}
    assert default.filled_in() == {**default.model_dump(mode="json", exclude_none=True), "optimizer": {"name": "adam"}}


def test_explicit_seeds() -> None:
    assert spec(seeds=[3, 7, 11]).seed_list() == [3, 7, 11]


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "epochs": 0}, "epochs"),
        ({"name": "x", "epochs": 1001}, "epochs"),
        ({"name": "x", "model": {"hidden": [0]}}, "model.hidden.0"),
        ({"name": "x", "model": {"hidden": [8193]}}, "model.hidden.0"),
        ({"name": "x", "model": {"hidden": [8] * 11}}, "model.hidden"),
        ({"name": "x", "model": {"width": 3}}, "model.width"),
        ({"name": "x", "optimizer": {"name": "adam", "learning_rate": math.nan}}, "optimizer.learning_rate"),
        ({"name": "x", "optimizer": {"name": "adagrad"}}, "optimizer.name"),
        ({"name": "x", "loss": "hinge"}, "loss"),
        ({"name": "x", "dataset": "../mnist"}, "dataset"),
        ({"name": "x", "batch_size": "big"}, "batch_size"),
        ({"name": "x", "unknown": 1}, "unknown"),
        ({"name": "x", "limit": {"train": 0}}, "limit.train"),
    ],
)
def test_bad_values_are_rejected_with_their_path(data: dict[str, Any], loc: str) -> None:
    assert loc in error_locs(data)


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"name": "a\ud800"}, "name"),
        ({"name": "x", "study": "\udfff"}, "study"),
        ({"name": "x", "description": "\ud800"}, "description"),
        ({"name": "x", "\ud800": 1}, "<key>"),
        ({"name": "x", "limit": {"\ud800": 1}}, "limit.<key>"),
        ({"name": "x", "grid": {"\ud800": [1]}}, "grid.<key>"),
        ({"name": "x", "grid": {"dataset": ["mnist", "\ud800"]}}, "grid.dataset.1"),
        ({"name": "x", "grid": {"model.hidden": [[{"\ud800": 1}]]}}, "grid.model.hidden.0.0.<key>"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "x", "study": "\x00"}, "study"),
    ],
)
def test_text_the_databases_cannot_store_is_refused_at_its_field(data: dict[str, Any], loc: str) -> None:
    # A lone surrogate (JSON "\ud800") cannot be encoded as UTF-8; PostgreSQL's text refuses NUL.
    assert error_locs(data) == [loc]


def test_replicates_and_seeds_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="either replicates or seeds"):
        spec(replicates=2, seeds=[1, 2])


def test_duplicate_seeds_are_rejected() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        spec(seeds=[1, 1])


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"model.width": [1]}, "unknown path"),
        ({"model.hidden": []}, "at least one value"),
        ({"model.hidden": [[8], [8]]}, "listed twice"),
        ({"optimizer.learning_rate": [0.1, float("inf")]}, "grid.optimizer.learning_rate: inf is not a finite number"),
        ({"model.hidden": [[0]]}, "model.hidden.0"),
        ({"optimizer.learning_rate": [-1.0]}, "optimizer.learning_rate"),
        ({"epochs": [5, "many"]}, "epochs"),
    ],
)
def test_bad_grids_are_rejected(grid: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(grid=grid)


def test_run_limit() -> None:
    with pytest.raises(ValidationError, match=f"at most {MAX_RUNS_PER_SWEEP}"):
        spec(replicates=1000, grid={"epochs": list(range(1, 12))})


def test_config_key_is_a_content_hash() -> None:
    a, b = spec(model={"hidden": [8]}).expand()[0], spec(model={"hidden": [8]}, name="other").expand()[0]
    assert a.key == b.key == config_key(a.train)
    assert a.key != spec(model={"hidden": [9]}).expand()[0].key


def test_labels_are_readable() -> None:
    label = describe_params({"model.hidden": [32, 64], "optimizer.learning_rate": 0.01})
    assert label == "hidden=[32, 64] · lr=0.01"
    assert describe_params({}) == "base"
