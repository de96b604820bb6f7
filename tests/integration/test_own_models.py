"""Your own model and data (issue 14, parts 1, 2 and 4): a CNN from model.layers and one from a
builder on a generated 3-class dataset of 16x16x1 images, submitted over the API and trained by the
real Keras worker through the real queue; bad layers, bad builders and bad dataset files, each a
clear error at its field or in the run."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app import datasets
from app.config import PROJECT_ROOT, Settings
from app.main import create_app
from app.services.runs import read_artifact
from tests.conftest import make_settings
from tests.factories import metric_rows, runs_of
from worker.main import Worker

BAD_BUILDERS = '''
import keras
def boom(params, input_shape, classes):
    raise ValueError(f"no model for {params['who']}\\nsecond line")
def nothing(params, input_shape, classes):
    return {"not": "a model"}
def ten_outputs(params, input_shape, classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
'''
LAYERS = [{"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}}, {"max_pooling2d": {"pool_size": 2}},
          {"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}}]
BASE = {"dataset": "blobs", "optimizer": {"name": "adam", "learning_rate": 0.01}, "epochs": 2, "batch_size": 16}


def blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16x16x1 uint8 noise with a bright 4x4 square whose place is the class (3 classes)."""
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 60, (n, 16, 16, 1))
    for i, k in enumerate(y):
        x[i, 2 + 4 * k: 6 + 4 * k, 2 + 4 * k: 6 + 4 * k, 0] += 190
    return x.astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def own_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data folder (blobs.npz, 240 + 60 images; vectors.npz, flat features) and a code folder
    (the README's examples/mymodels.py and some bad builders)."""
    data, code = tmp_path_factory.mktemp("own-data"), tmp_path_factory.mktemp("own-code")
    rng = np.random.default_rng(0)
    (xt, yt), (xs, ys) = blobs(240, rng), blobs(60, rng)
    np.savez(data / "blobs.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    np.savez(data / "vectors.npz", x_train=rng.normal(size=(20, 5)).astype(np.float32), y_train=np.arange(20) % 2,
             x_test=rng.normal(size=(6, 5)).astype(np.float32), y_test=np.arange(6) % 2)
    shutil.copy(PROJECT_ROOT / "examples" / "mymodels.py", code / "mymodels.py")
    (code / "badmodels.py").write_text(BAD_BUILDERS)
    return data, code


@pytest.fixture
def settings(database_url: str, own_dirs: tuple[Path, Path], tmp_path: Path) -> Settings:
    data, code = own_dirs
    return make_settings(database_url, data, tmp_path / "artifacts", trainer="keras", code_dir=code,
                         lease_seconds=30.0)


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def submit(api: TestClient, spec: dict[str, Any]) -> int:
    r = api.post("/api/sweeps", json=spec)
    assert r.status_code == 201, r.text
    sweep_id: int = r.json()["id"]
    return sweep_id


def saved_model(engine: Engine, run_id: int, tmp_path: Path) -> Any:
    import keras

    path = tmp_path / f"run-{run_id}.keras"
    path.write_bytes(read_artifact(engine, run_id, "model.keras")[1])
    return keras.saving.load_model(path)


def test_a_layers_cnn_and_a_builder_model_train_through_the_queue(
        api: TestClient, engine: Engine, settings: Settings, own_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    layers_id = submit(api, {**BASE, "name": "cnn layers", "model": {"layers": LAYERS},
                             "grid": {"model.layers.0.conv2d.filters": [4, 8]}, "replicates": 2})
    builder_id = submit(api, {**BASE, "name": "cnn builder", "model": {"builder": "mymodels:small_cnn"},
                              "params": {"dropout": 0.0}, "grid": {"params.dropout": [0.0, 0.25]}, "replicates": 1})
    t0 = time.perf_counter()
    Worker(settings, engine).run(once=True)
    print(f"worker: {time.perf_counter() - t0:.1f} s")

    with np.load(own_dirs[0] / "blobs.npz") as f:
        x_test, y_test = f["x_test"].astype(np.float32) / 255.0, f["y_test"]
    seen: dict[str, set[float]] = {"filters": set(), "rate": set()}
    for sweep_id, kind, n in ((layers_id, "filters", 4), (builder_id, "rate", 2)):
        runs = runs_of(engine, sweep_id)
        assert [r.status for r in runs] == ["succeeded"] * n, [r.error for r in runs]
        configs = {r["id"]: r["config"] for r in api.get(f"/api/sweeps/{sweep_id}/runs").json()}
        for run in runs:
            rows = metric_rows(engine, run.id)
            val_acc = {e: v for k, e, v in rows if k == "val_accuracy"}
            assert sorted(val_acc) == [0, 1, 2]  # epoch 0 evaluated before training, then two epochs
            model = saved_model(engine, run.id, tmp_path)
            # The grid's value reached the model: the conv layer's filters, the builder's dropout rate.
            conv = next(layer for layer in model.layers if layer.name.startswith("conv2d"))
            dropout = [layer.rate for layer in model.layers if layer.name.startswith("dropout")]
            if kind == "filters":
                assert conv.filters == configs[run.id]["model"]["layers"][0]["conv2d"]["filters"]
                assert model.output_shape == (None, 3)  # sweeplab's output layer: the dataset's 3 classes
                seen["filters"].add(conv.filters)
            else:
                assert dropout == [configs[run.id]["params"]["dropout"]]
                seen["rate"].add(dropout[0])
            # Independently: the saved model's accuracy on the test set is the last recorded val_accuracy,
            # and the stored confusion matrix (3 x 3: one row per class) counts its predictions.
            predicted = model.predict(x_test, verbose=0).argmax(axis=1)
            assert val_acc[2] == pytest.approx(float((predicted == y_test).mean()), abs=1e-6)
            matrix = json.loads(read_artifact(engine, run.id, "confusion_matrix")[1])["matrix"]
            expected = np.zeros((3, 3), int)
            np.add.at(expected, (y_test, predicted), 1)
            assert matrix == expected.tolist()
            assert val_acc[2] > 0.6  # the blobs are easy
    assert seen == {"filters": {4, 8}, "rate": {0.0, 0.25}}


def test_the_worker_packs_plain_dense_stacks_only(settings: Settings) -> None:
    """The one decision (worker.main.trainer_factory): hidden and dense-only layers train packed; conv
    layers and builders one model per replicate."""
    from app.spec import TrainSpec
    from worker.keras_packed import PackedTrainer
    from worker.keras_single import SingleTrainer
    from worker.main import trainer_factory
    from worker.trainer import PreparedData

    rng = np.random.default_rng(1)
    x, y = blobs(20, rng)
    data = PreparedData.from_images(datasets.ImageData(x, y, x, y))
    choose = trainer_factory(settings)
    kinds = {"hidden": {"hidden": [4]}, "dense layers": {"layers": [{"dense": {"units": 4}}, {"dense": {"units": 3}}]},
             "mixed activations": {"layers": [{"dense": {"units": 4}}, {"dense": {"units": 3, "activation": "tanh"}}]},
             "conv": {"layers": LAYERS}, "builder": {"builder": "mymodels:small_cnn"}}
    chosen = {name: type(choose(TrainSpec.model_validate({"model": model}), [0, 1], data, [None, None])).__name__
              for name, model in kinds.items()}
    assert chosen == {"hidden": PackedTrainer.__name__, "dense layers": PackedTrainer.__name__,
                      "mixed activations": SingleTrainer.__name__, "conv": SingleTrainer.__name__,
                      "builder": SingleTrainer.__name__}


@pytest.mark.parametrize(("builder", "error"), [
    ("badmodels:boom", "model builder badmodels:boom raised ValueError: no model for me"),
    ("badmodels:nothing", "model builder badmodels:nothing returned dict, not a keras.Model"),
    ("badmodels:ten_outputs", "model builder badmodels:ten_outputs: its model answers outputs of shape (10,) per "
                              "input, but the dataset has 3 classes"),
    ("badmodels:missing", "model builder badmodels:missing: module badmodels has no function missing"),
    ("json:loads", "model builder json:loads: no module json in the worker's code folder"),
])
def test_a_bad_builder_fails_its_runs_with_its_own_words(api: TestClient, engine: Engine, settings: Settings,
                                                         builder: str, error: str) -> None:
    sweep_id = submit(api, {**BASE, "name": "bad builder", "model": {"builder": builder}, "params": {"who": "me"},
                            "replicates": 2, "epochs": 1})
    Worker(settings, engine).run(once=True)
    runs = runs_of(engine, sweep_id)
    assert [r.status for r in runs] == ["failed", "failed"]
    for run in runs:
        assert (run.error or "").startswith(error) and "Traceback" not in (run.error or "")
        assert "\n" not in (run.error or "")  # the first line of the builder's text, not a dump


@pytest.mark.parametrize(("model", "loc"), [
    ({"layers": [{"conv2d": {"filters": 0}}]}, "model.layers.0.conv2d.filters"),
    ({"layers": [{"conv2d": {"filters": 1025}}]}, "model.layers.0.conv2d.filters"),
    ({"layers": [{"flatten": {}}, {"conv2d": {"filters": 4, "kernel_size": 12}}]}, "model.layers.1.conv2d.kernel_size"),
    ({"layers": [{"conv2d": {"filters": 4, "padding": "full"}}]}, "model.layers.0.conv2d.padding"),
    ({"layers": [{"dense": {"units": 4097}}]}, "model.layers.0.dense.units"),
    ({"layers": [{"dense": {}}]}, "model.layers.0.dense.units"),
    ({"layers": [{"dense": {"units": 4}}, {"dropout": {"rate": 1.0}}]}, "model.layers.1.dropout.rate"),
    ({"layers": [{"max_pooling2d": {"pool_size": 0}}]}, "model.layers.0.max_pooling2d.pool_size"),
    ({"layers": [{"conv3d": {"filters": 4}}]}, "model.layers.0.conv3d"),
    ({"layers": [{"dense": {"units": 4}, "flatten": {}}]}, "model.layers.0"),
    ({"layers": [{"dense": {"units": 4, "size": 3}}]}, "model.layers.0.dense.size"),
    ({"layers": [{"dense": {"units": 4}}], "hidden": [4]}, "model"),
    ({"builder": "mymodels"}, "model.builder"),
    ({"builder": "../mymodels:small_cnn"}, "model.builder"),
    # Shapes checked against the dataset (16x16x1 images): a window that does not fit, conv after flatten.
    ({"layers": [{"conv2d": {"filters": 4, "kernel_size": 11}}, {"max_pooling2d": {"pool_size": 7}}]},
     "model.layers.1.max_pooling2d"),
    ({"layers": [{"flatten": {}}, {"conv2d": {"filters": 4}}]}, "model.layers.1.conv2d"),
    ({"layers": [{"dense": {"units": 4096}}, {"dense": {"units": 4096}}, {"dense": {"units": 4096}},
                 {"dense": {"units": 4096}}]}, "model.layers"),
])
def test_bad_layers_are_a_422_naming_the_field(api: TestClient, model: dict[str, Any], loc: str) -> None:
    r = api.post("/api/sweeps", json={**BASE, "name": "bad", "model": model})
    assert r.status_code == 422, r.text
    assert loc in [f["loc"] for f in r.json()["error"]["fields"]], r.json()


@pytest.mark.parametrize(("spec", "named"), [
    ({"model": {"layers": LAYERS}, "grid": {"model.layers.4.dense.units": [4]}}, "model.layers.4.dense.units"),
    ({"model": {"layers": LAYERS}, "grid": {"model.layers.0.dense.units": [4]}}, "model.layers.0.dense.units"),
    ({"model": {"layers": LAYERS}, "grid": {"model.layers.00.conv2d.filters": [4]}}, "model.layers.00.conv2d"),
    ({"model": {"layers": LAYERS}, "grid": {"model.layers.0.conv2d.filters": [4, 0]}},
     "model.layers.0.conv2d.filters"),
    ({"model": {"builder": "mymodels:small_cnn"}, "params": {"dropout": 0.0}, "grid": {"params.droput": [0.1]}},
     "params.droput"),
    ({"model": {"layers": LAYERS}, "grid": {"model.layers.0.conv2d.kernel_size": [3, 11],
                                            "model.layers.1.max_pooling2d.pool_size": [2, 7]}},
     "model.layers.1.max_pooling2d"),  # pool 7 does not fit the 6x6 image a kernel of 11 leaves
    ({"dataset": "vectors", "model": {"layers": LAYERS}}, "model.layers.0.conv2d"),
])
def test_grid_paths_into_layers_and_params_are_checked(api: TestClient, spec: dict[str, Any], named: str) -> None:
    r = api.post("/api/sweeps", json={**BASE, "name": "bad grid", **spec})
    assert r.status_code == 422, r.text
    assert named in r.json()["error"]["message"]


def test_a_dense_stack_on_flat_vectors_is_accepted(api: TestClient) -> None:
    model = {"layers": [{"dense": {"units": 8}}, {"dropout": {"rate": 0.5}}]}
    r = api.post("/api/sweeps/validate", json={**BASE, "dataset": "vectors", "name": "vectors", "model": model})
    assert r.status_code == 200, r.text


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


GOOD = {"x_train": np.zeros((4, 3, 3), np.uint8), "y_train": np.array([0, 1, 2, 1]),
        "x_test": np.zeros((2, 3, 3), np.uint8), "y_test": np.array([0, 1])}


@pytest.mark.parametrize(("change", "words"), [
    ({"y_train": np.array([0, 1, 2])}, "x_train has 4 examples but y_train 3 labels"),
    ({"x_test": np.zeros((2, 3, 4), np.uint8)}, "x_train's examples have shape (3, 3) but x_test's (3, 4)"),
    ({"y_test": np.array([0, -1])}, "y_test has the label -1"),
    ({"y_train": np.array([0.0, 1.0, 2.0, 1.0])}, "give integer labels"),
    ({"x_train": np.zeros((4, 3, 3), np.int32)}, "x_train has dtype int32"),
    ({"x_train": np.zeros((4, 2, 2, 2, 2), np.uint8)}, "x_train has shape (4, 2, 2, 2, 2)"),
    ({"y_test": None}, "lacks y_test"),
    ({"y_train": np.zeros(4, np.int64), "y_test": np.zeros(2, np.int64)}, "at least two classes"),
])
def test_a_malformed_dataset_file_is_a_422_at_dataset(api: TestClient, own_dirs: tuple[Path, Path],
                                                      change: dict[str, Any], words: str) -> None:
    arrays = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    name = f"bad_{abs(hash(words)) % 10**8}"
    (own_dirs[0] / f"{name}.npz").write_bytes(npz_bytes(**arrays))
    r = api.post("/api/sweeps", json={**BASE, "name": "bad data", "dataset": name, "model": {"hidden": [4]}})
    assert r.status_code == 422, r.text
    (field,) = r.json()["error"]["fields"]
    assert field["loc"] == "dataset" and words in field["msg"] and name in field["msg"]


def test_unknown_datasets_and_files_that_are_no_npz(api: TestClient, own_dirs: tuple[Path, Path]) -> None:
    (own_dirs[0] / "garbage.npz").write_bytes(b"not a zip at all")
    for name, words in (("garbage", "not a valid .npz file"), ("nowhere", "unknown dataset 'nowhere'")):
        r = api.post("/api/sweeps", json={**BASE, "name": "bad data", "dataset": name})
        assert r.status_code == 422 and words in r.json()["error"]["fields"][0]["msg"], r.text
    r = api.post("/api/sweeps", json={**BASE, "name": "bad data", "dataset": "../blobs"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "dataset"


def test_a_dataset_file_is_described_once_per_version(own_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "grows.npz"
    path.write_bytes(npz_bytes(**GOOD))
    first = datasets.describe("grows", tmp_path)
    assert first is datasets.describe("grows", tmp_path)  # unchanged file: the cached description
    assert (first.input_shape, first.classes, first.train, first.test) == ((3, 3), 3, 4, 2)
    path.write_bytes(npz_bytes(**{**GOOD, "y_train": np.array([0, 1, 2, 4])}))
    assert datasets.describe("grows", tmp_path).classes == 5  # a new version of the file is read again


def test_the_dataset_page_describes_any_dataset(api: TestClient, own_dirs: tuple[Path, Path]) -> None:
    data = own_dirs[0]
    with np.load(data / "blobs.npz") as f:
        x_train, y_train, y_test = f["x_train"], f["y_train"], f["y_test"]
    summary = api.get("/api/datasets/blobs").json()
    assert summary["shape"] == [16, 16, 1] and summary["classes"] == 3 and summary["kind"] == "images"
    assert summary["train"] == {"n": 240, "counts": np.bincount(y_train, minlength=3).tolist()}
    assert summary["test"]["counts"] == np.bincount(y_test, minlength=3).tolist()
    images = api.get("/api/datasets/blobs/images?split=train&start=3&count=2").json()
    assert images["shape"] == [16, 16] and images["labels"] == y_train[3:5].tolist()
    assert images["images"] == x_train[3:5].reshape(2, -1).tolist()
    page = api.get("/datasets/blobs")
    assert page.status_code == 200 and "16\u00d716 pixels, 1 channel" in page.text and "3 classes" in page.text
    rgb = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3) / 23.0  # floats in [0, 1]
    labels = np.array([0, 1])
    (data / "rgb.npz").write_bytes(npz_bytes(x_train=rgb, y_train=labels, x_test=rgb, y_test=labels[::-1]))
    colour = api.get("/api/datasets/rgb/images?split=test&count=1").json()
    assert colour["shape"] == [2, 2, 3] and colour["images"] == [np.rint(rgb[0] * 255).astype(int).ravel().tolist()]
    vectors = api.get("/api/datasets/vectors/images").json()
    assert vectors["kind"] == "vectors" and vectors["images"] == [] and len(vectors["labels"]) == 20
    assert "a vector of 5 features" in api.get("/datasets/vectors").text


def test_cifar10_is_a_built_in_that_says_what_to_do_offline(api: TestClient, own_dirs: tuple[Path, Path]) -> None:
    if datasets.locate("cifar10", own_dirs[0]) is not None or datasets._keras_cache_has("cifar10"):
        pytest.skip("cifar10 is on this machine")
    datasets._reachable_checked[:] = [1e18, 0.0]  # offline, as on this machine
    try:
        r = api.post("/api/sweeps", json={**BASE, "name": "cifar", "dataset": "cifar10"})
    finally:
        datasets._reachable_checked[:] = [-1e9, 0.0]
    assert r.status_code == 422
    (field,) = r.json()["error"]["fields"]
    assert field["loc"] == "dataset" and "cifar10.npz" in field["msg"] and "offline" in field["msg"]
