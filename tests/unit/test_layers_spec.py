"""model.layers, model.builder and params in the spec: validation at the field, dotted grid paths
into layers (by index) and params, stored config keys unchanged for hidden models, the submit-time
shape arithmetic against Keras' own, and which models train packed."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from app.datasets import ImageData
from app.layer_shapes import Misfit, layer_problems, weight_count
from app.spec import SweepSpec, TrainSpec, config_key, spec_yaml
from worker.trainer import PreparedData, dense_equivalent

CNN = [{"conv2d": {"filters": 4}}, {"max_pooling2d": {}}, {"flatten": {}}, {"dense": {"units": 16}}]


def sweep(**data: Any) -> SweepSpec:
    return SweepSpec.model_validate({"name": "x", **data})


def locs(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        sweep(**data)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


def test_layers_take_their_defaults_and_dump_as_written() -> None:
    s = sweep(model={"layers": [{"conv2d": {"filters": 8}}, {"max_pooling2d": None}, {"flatten": None},
                                {"dropout": {"rate": 0.5}}, {"batch_normalization": {}}, {"dense": {"units": 3}}]})
    assert s.filled_in()["model"]["layers"] == [
        {"conv2d": {"filters": 8, "kernel_size": 3, "strides": 1, "padding": "valid", "activation": "relu"}},
        {"max_pooling2d": {"pool_size": 2}}, {"flatten": {}}, {"dropout": {"rate": 0.5}}, {"batch_normalization": {}},
        {"dense": {"units": 3, "activation": "relu"}}]
    assert "hidden" not in s.filled_in()["model"] and "builder" not in s.filled_in()["model"]
    # The YAML the server writes reads back to the same spec.
    assert SweepSpec.model_validate(__import__("yaml").safe_load(spec_yaml(s.filled_in()))) == s


def test_hidden_models_keep_their_stored_config_keys() -> None:
    """Keys computed by the code before layers, builders and params existed (configs.key never changes)."""
    assert config_key(TrainSpec()) == "c56c42d5ad503fcb"
    old = {"model": {"hidden": [16, 8], "activation": "tanh"}, "dataset": "fashion_mnist", "limit": {"train": 100}}
    assert config_key(TrainSpec.model_validate(old)) == "5aa279144c4d52bd"
    assert set(TrainSpec().model_dump(mode="json")["model"]) == {"hidden", "activation", "output_activation"}


@pytest.mark.parametrize(("model", "loc"), [
    ({"layers": [{"conv2d": {"filters": 0}}]}, "model.layers.0.conv2d.filters"),
    ({"layers": [{"conv2d": {"filters": 4, "strides": 12}}]}, "model.layers.0.conv2d.strides"),
    ({"layers": [{"dense": {"units": 0}}]}, "model.layers.0.dense.units"),
    ({"layers": [{"dense": {"units": 4, "activation": "gelu"}}]}, "model.layers.0.dense.activation"),
    ({"layers": [{"flatten": {}}, {"dropout": {"rate": -0.1}}]}, "model.layers.1.dropout.rate"),
    ({"layers": [{"dropout": {}}]}, "model.layers.0.dropout.rate"),
    ({"layers": [{"batch_normalization": {"momentum": 0.9}}]}, "model.layers.0.batch_normalization.momentum"),
    ({"layers": [{}]}, "model.layers.0"),
    ({"layers": ["dense"]}, "model.layers.0"),
    ({"layers": [{"dense": {"units": 1}}] * 51}, "model.layers"),
    ({"builder": "my models:f"}, "model.builder"),
    ({"builder": "mymodels:f", "layers": []}, "model"),
    ({"builder": "m:f" + "x" * 200}, "model.builder"),
])
def test_bad_models_are_refused_at_their_field(model: dict[str, Any], loc: str) -> None:
    assert loc in locs({"model": model})


def test_one_of_hidden_layers_and_builder_and_hidden_32_when_none() -> None:
    assert sweep().model.hidden == [32]
    assert sweep(model={"layers": []}).model.hidden is None
    with pytest.raises(ValidationError, match=re.escape("give one of model.hidden, model.layers and model.builder")):
        sweep(model={"hidden": [4], "builder": "m:f"})


@pytest.mark.parametrize(("params", "words"), [
    ({"x": math.nan}, "finite numbers"),
    ({1: "a"}, "valid string"),  # a YAML number as a key
    ({"x": "y" * 20_001}, "at most 20000 characters"),
    ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}}, "at most 10 levels"),
    ({"when": __import__("datetime").date(2026, 1, 1)}, "JSON values only"),
])
def test_params_are_bounded_json(params: dict[Any, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        sweep(model={"builder": "m:f"}, params=params)


def test_grid_paths_reach_layers_by_index_and_params_by_key() -> None:
    s = sweep(model={"layers": CNN}, params={"lr": {"start": 0.1}},
              grid={"model.layers.0.conv2d.filters": [4, 8], "model.layers.3.dense.activation": ["relu", "tanh"],
                    "params.lr.start": [0.1, 0.2]})
    configs = s.expand()
    assert len(configs) == 8
    for c in configs:
        layers = c.train.model.layers
        assert layers is not None and layers[0].conv2d is not None and layers[3].dense is not None
        assert layers[0].conv2d.filters == c.params["model.layers.0.conv2d.filters"]
        assert layers[3].dense.activation == c.params["model.layers.3.dense.activation"]
        assert c.train.params == {"lr": {"start": c.params["params.lr.start"]}}
        assert layers[1].max_pooling2d is not None and layers[1].max_pooling2d.pool_size == 2  # the rest as given
    assert len({c.key for c in configs}) == 8
    # A whole layer list is an axis too.
    assert len(sweep(model={"layers": CNN}, grid={"model.layers": [CNN, CNN[2:]]}).expand()) == 2


@pytest.mark.parametrize("path", [
    "model.layers.4.dense.units",  # no layer 4
    "model.layers.0.dense.units",  # layer 0 is a conv2d
    "model.layers.01.conv2d.filters",  # not the canonical index
    "model.layers.-1.conv2d.filters",
    "model.layers.0.conv2d.dilation",
    "params.missing",
    "params",
    "model.width",
])
def test_grid_paths_the_spec_does_not_have_are_refused_by_name(path: str) -> None:
    with pytest.raises(ValidationError, match="unknown path") as info:
        sweep(model={"layers": CNN}, params={"lr": 0.1}, grid={path: [1]})
    assert repr(path) in str(info.value)


def test_an_axis_that_replaces_what_a_later_one_names_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match=re.escape("model.layers.0.conv2d.filters names no setting")):
        sweep(model={"layers": CNN}, grid={"model.layers": [CNN[2:]], "model.layers.0.conv2d.filters": [4]})


@pytest.mark.parametrize(("layers", "shape"), [
    (CNN, (16, 16, 1)),
    ([{"conv2d": {"filters": 3, "kernel_size": 5, "strides": 2, "padding": "same"}},
      {"batch_normalization": {}}, {"max_pooling2d": {"pool_size": 3}}, {"dropout": {"rate": 0.1}},
      {"conv2d": {"filters": 2, "kernel_size": 2}}], (28, 28)),  # a channel axis added, no flatten given
    ([{"dense": {"units": 7}}, {"batch_normalization": {}}, {"dense": {"units": 5}}], (6, 4, 3)),
    ([{"dropout": {"rate": 0.2}}], (9,)),
])
def test_the_submit_time_arithmetic_is_keras_own(layers: list[dict[str, Any]], shape: tuple[int, ...]) -> None:
    from worker.keras_models import build_model

    spec = TrainSpec.model_validate({"model": {"layers": layers}})
    assert spec.model.layers is not None
    model = build_model(spec, shape, 3)
    assert weight_count(spec.model.layers, shape, 3) == model.count_params()
    assert model.output_shape == (None, 3)
    assert layer_problems(spec.model.layers, shape, 3) == []


def test_layers_that_do_not_fit_are_named() -> None:
    def problem(layers: list[dict[str, Any]], shape: tuple[int, ...]) -> tuple[str, str]:
        model = TrainSpec.model_validate({"model": {"layers": layers}}).model
        assert model.layers is not None
        with pytest.raises(Misfit) as info:
            weight_count(model.layers, shape, 10)
        return info.value.loc, str(info.value)

    assert problem([{"conv2d": {"filters": 1, "kernel_size": 5}}], (4, 4, 1)) == (
        "model.layers.0.conv2d", "the image is 4x4 here: kernel_size 5 does not fit (a smaller window, padding "
                                 "'same' or fewer layers before)")
    assert problem([{"conv2d": {"filters": 1}}], (10,))[0] == "model.layers.0.conv2d"
    assert problem([{"dense": {"units": 4}}, {"max_pooling2d": {}}], (8, 8))[0] == "model.layers.1.max_pooling2d"
    big = TrainSpec.model_validate({"model": {"layers": [{"dense": {"units": 4096}}] * 4}}).model.layers
    assert big is not None and layer_problems(big, (28, 28), 10)[0][0] == "model.layers"


def test_plain_dense_stacks_are_packed_as_their_hidden_equivalent() -> None:
    from worker.keras_models import fresh_state

    layers = TrainSpec.model_validate({"model": {"layers": [{"dense": {"units": 5, "activation": "tanh"}},
                                                            {"dense": {"units": 3, "activation": "tanh"}}],
                                                 "output_activation": "sigmoid"}})
    hidden = dense_equivalent(layers)
    assert hidden is not None and hidden.model.model_dump() == {"hidden": [5, 3], "activation": "tanh",
                                                                "output_activation": "sigmoid"}
    # The same network, weights in the same order: checkpoints of one resume in the other.
    a, b = fresh_state(layers, 7, (4, 4), 3), fresh_state(hidden, 7, (4, 4), 3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    mixed = [{"dense": {"units": 5}}, {"dense": {"units": 5, "activation": "tanh"}}]
    for model in ({"layers": [{"dense": {"units": 5}}, {"dropout": {"rate": 0.1}}]}, {"layers": CNN},
                  {"builder": "m:f"}, {"layers": mixed}):
        assert dense_equivalent(TrainSpec.model_validate({"model": model})) is None


def test_prepared_data_scales_uint8_only_and_counts_classes() -> None:
    raw = ImageData(np.array([[0, 255]], np.uint8), np.array([2]), np.array([[0, 51]], np.uint8), np.array([0]))
    data = PreparedData.from_images(raw)
    assert data.x_train.tolist() == [[0.0, 1.0]] and data.classes == 3 and data.input_shape == (2,)
    assert data.targets("mse", "test").tolist() == [[1.0, 0.0, 0.0]]
    floats = PreparedData.from_images(ImageData(np.array([[-3.5, 7.0]]), np.array([1]), np.array([[2.0, 0.0]]),
                                                np.array([0]), classes=4))
    assert floats.x_train.tolist() == [[-3.5, 7.0]] and floats.x_train.dtype == np.float32 and floats.classes == 4
    assert ImageData(raw.x_train, raw.y_train, raw.x_test, raw.y_test).limited(1, 1).classes == 3


RESUMABLE = '''
import keras
def adagrad_cnn(params, input_shape, classes):
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Conv2D(3, 3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dropout(params["dropout"]),
                              keras.layers.Dense(classes, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adagrad(0.1), loss="sparse_categorical_crossentropy")
    return model
'''


@pytest.mark.parametrize("kind", ["layers", "builder"])
def test_a_resumed_model_trains_on_exactly_as_an_uninterrupted_one(kind: str, tmp_path: Any) -> None:
    """Batch normalization's statistics, dropout's seed state and a builder's own optimizer (Adagrad's
    accumulators: opt/other/k) are in the checkpoint, so epoch 2 after a resume is epoch 2 without one."""
    from worker.keras_single import SingleTrainer

    (tmp_path / "resumable.py").write_text(RESUMABLE)
    model = {"builder": "resumable:adagrad_cnn"} if kind == "builder" else {"layers": [
        {"conv2d": {"filters": 3}}, {"batch_normalization": {}}, {"dropout": {"rate": 0.3}}, {"dense": {"units": 5}}]}
    spec = TrainSpec.model_validate({"model": model, "params": {"dropout": 0.3}, "batch_size": 8})
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 255, (40, 6, 6), dtype=np.uint8), rng.integers(0, 3, 40)
    data = PreparedData.from_images(ImageData(x, y, x[:10], y[:10]))
    through = SingleTrainer(spec, [5], data, [None], code_dir=tmp_path)
    through.train_epoch(1, lambda: False)
    state = through.state(0)
    assert any(k.startswith("n/") for k in state)
    assert kind == "layers" or any(k.startswith("opt/other/") for k in state)
    resumed = SingleTrainer(spec, [5], data, [state], code_dir=tmp_path)
    assert resumed.train_epoch(2, lambda: False) == through.train_epoch(2, lambda: False)
    after, again = through.state(0), resumed.state(0)
    assert after.keys() == again.keys() and all(np.array_equal(after[k], again[k]) for k in after)
