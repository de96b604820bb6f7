"""The pack key: configs that differ only in learning rate and epochs share it, nothing else does;
its values are stored (configs.pack_key), so migration 0005's copy must compute the same."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from app.config import PROJECT_ROOT
from app.packing import pack_key, pack_key_of
from app.spec import SweepSpec, TrainSpec, content_key

BASE: dict[str, Any] = {"model": {"hidden": [16]}, "optimizer": {"name": "sgd", "learning_rate": 0.1}, "epochs": 5}


def key(**changes: Any) -> str:
    data = {**BASE, **changes}
    return pack_key(TrainSpec.model_validate(data))


def test_learning_rate_and_epochs_do_not_split_a_pack() -> None:
    assert key() == key(epochs=20) == key(optimizer={"name": "sgd", "learning_rate": 0.001})
    assert key() == key(optimizer={"name": "sgd"})  # Keras' default rate for SGD (0.01)


@pytest.mark.parametrize("changes", [
    {"model": {"hidden": [32]}},
    {"model": {"hidden": [16], "activation": "tanh"}},
    {"optimizer": {"name": "adam", "learning_rate": 0.1}},
    {"loss": "mse"},
    {"batch_size": 64},
    {"dataset": "fashion_mnist"},
    {"limit": {"train": 100}},
    {"params": {"width": 3}},
], ids=lambda c: next(iter(c)))
def test_everything_else_does(changes: dict[str, Any]) -> None:
    assert key(**changes) != key()


def test_the_study_questions_and_a_rate_grid_share_keys() -> None:
    """q1/q2-like sweeps (one config at 5 and 20 epochs) and a grid over the learning rate: one key;
    a grid over the width: one key per width. It is the content key of the settings without the two."""
    short = SweepSpec.model_validate({"name": "q1", **BASE}).expand()
    long = SweepSpec.model_validate({"name": "q2", **BASE, "epochs": 20}).expand()
    rates = SweepSpec.model_validate({"name": "lr", **BASE, "grid": {"optimizer.learning_rate": [0.1, 0.01]}}).expand()
    widths = SweepSpec.model_validate({"name": "w", **BASE, "grid": {"model.hidden": [[16], [32]]}}).expand()
    assert len({c.key for c in short + long + rates}) == 3  # distinct configs ...
    assert {pack_key(c.train) for c in short + long + rates} == {key()}  # ... one pack key
    assert len({pack_key(c.train) for c in widths}) == 2
    train = short[0].train.model_dump(mode="json")
    del train["epochs"], train["optimizer"]["learning_rate"]
    assert key() == content_key(train)


def test_migration_0005_computes_the_stored_key_as_the_app_does() -> None:
    path = PROJECT_ROOT / "migrations" / "versions" / "0005_pack_key.py"
    spec = importlib.util.spec_from_file_location("migration_0005", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    trains = [TrainSpec.model_validate(BASE), TrainSpec(), TrainSpec.model_validate({"model": {"builder": "m:f"},
                                                                                      "params": {"a": [1, 2]}})]
    for train in trains:
        stored = train.model_dump(mode="json")
        assert migration.pack_key_of(stored) == pack_key_of(stored) == pack_key(train)
    assert stored["optimizer"]["learning_rate"] is not None  # pack_key_of copies: the stored dict is untouched
