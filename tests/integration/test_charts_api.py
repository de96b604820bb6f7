"""The JSON behind the dashboard: aggregates, tables, comparisons, validation, datasets, errors.

`seed_sweep` (also used by the browser tests) stores a sweep with metrics written straight into the
database, so every number the API answers can be checked against numpy and scipy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine, insert, update

from app.config import Settings
from app.db import write_session
from app.main import create_app
from app.models import Artifact, Metric, Run, RunStatus
from app.schemas import SweepPublic
from app.services import axes, charts
from app.services.queue import Claim, record_epoch
from app.services.runs import list_runs
from app.services.sweeps import create_sweep, parse_spec

Curve = Callable[[int, int, int], dict[str, float | None]]  # (config position, seed, epoch) -> metrics


def study_curve(position: int, seed: int, epoch: int) -> dict[str, float | None]:
    """Accuracy that rises with the epoch, a little higher for later configs, noisy across seeds."""
    noise = ((seed * 7919 + position * 104729) % 1000) / 1000 - 0.5
    acc = 0.1 + (0.78 + 0.1 * (1 - math.exp(-position / 3)) + 0.02 * noise) * (1 - math.exp(-1.5 * epoch))
    return {"loss": 2.3 * (1 - acc), "accuracy": acc, "val_loss": 2.4 * (1 - acc) + 0.01 * noise,
            "val_accuracy": acc - 0.01 + 0.01 * noise, "epoch_seconds": 0.5 if epoch else 0.0}


def _artifacts(run_id: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    labels = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    before = rng.random((10, 10)).round(4).tolist()
    after = np.eye(10)[labels].tolist()
    matrix = (np.eye(10, dtype=int) * 90 + rng.integers(0, 5, (10, 10))).tolist()
    blobs = {
        "outputs_before": {"indices": list(range(10)), "labels": labels, "outputs": before},
        "outputs_after": {"indices": list(range(10)), "labels": labels, "outputs": after},
        "confusion_matrix": {"rows": "true label", "columns": "predicted label", "matrix": matrix},
    }
    rows = [{"run_id": run_id, "name": k, "content_type": "application/json", "data": json.dumps(v).encode()}
            for k, v in blobs.items()]
    return [*rows, {"run_id": run_id, "name": "model.keras", "content_type": "application/octet-stream",
                    "data": b"not really a model"}]


def seed_sweep(engine: Engine, spec: dict[str, Any], curve: Curve = study_curve,
               upto: Callable[[int, int], int] | None = None) -> SweepPublic:
    """Create the sweep and store every run's epochs 0..E (or 0..upto(position, seed)) as a worker
    would. Runs with all their epochs end succeeded with artifacts; the others stay running."""
    sweep = create_sweep(engine, parse_spec(spec), 10_000, 3)
    positions = {c["id"]: c["position"] for c in charts.config_infos(engine, sweep.id)}
    runs = list_runs(engine, sweep.id)
    with write_session(engine) as s:
        metrics, artifacts = [], []
        for run in runs:
            pos = positions[run.config_id]
            last = run.epochs if upto is None else min(run.epochs, upto(pos, run.seed))
            for epoch in range(last + 1):
                metrics += [{"run_id": run.id, "key": k, "epoch": epoch, "value": v, "created_at": 0.0}
                            for k, v in curve(pos, run.seed, epoch).items()]
            done = last == run.epochs
            s.execute(update(Run).where(Run.id == run.id).values(
                status=(RunStatus.SUCCEEDED if done else RunStatus.RUNNING).value, last_epoch=last, attempt=1,
                started_at=1_700_000_000.0, finished_at=1_700_000_060.0 if done else None,
                train_seconds=0.5 * last, lease_token=None if done else "seeded",
                lease_expires_at=None if done else 4e9, worker_id="seed"))
            if done:
                artifacts += _artifacts(run.id, run.seed)
        if metrics:
            s.execute(insert(Metric), metrics)
        if artifacts:
            s.execute(insert(Artifact), artifacts)
    charts.memo.clear()
    return sweep


WIDTHS_SPEC: dict[str, Any] = {
    "name": "widths", "study": "test-study", "dataset": "mnist", "epochs": 4, "replicates": 3,
    "grid": {"model.hidden": [[8], [32], [128]]},
}


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def test_aggregates_equal_numpy_over_replicates(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC)
    body = client.get(f"/api/sweeps/{sweep.id}/aggregates", params={"keys": ["val_accuracy", "loss"]}).json()
    assert [c["label"] for c in body["configs"]] == ["hidden=[8]", "hidden=[32]", "hidden=[128]"]
    assert body["cursor"] > 0
    for config in body["configs"]:
        col = body["series"][str(config["id"])]["val_accuracy"]
        assert col["epochs"] == [0, 1, 2, 3, 4]
        for i, epoch in enumerate(col["epochs"]):
            xs = np.array([study_curve(config["position"], seed, epoch)["val_accuracy"] for seed in range(3)])
            assert col["n"][i] == 3
            assert col["mean"][i] == pytest.approx(xs.mean(), abs=1e-12)
            assert col["std"][i] == pytest.approx(xs.std(ddof=1), rel=1e-6, abs=1e-9)
            assert (col["min"][i], col["max"][i]) == pytest.approx((xs.min(), xs.max()))


def test_aggregates_follow_new_epochs(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "grid": {}}, upto=lambda pos, seed: 1)
    first = client.get(f"/api/sweeps/{sweep.id}/aggregates", params={"keys": ["accuracy"]}).json()
    config_id = str(first["configs"][0]["id"])
    assert first["series"][config_id]["accuracy"]["epochs"] == [0, 1]
    run = list_runs(engine, sweep.id)[0]
    claim = Claim(run.id, sweep.id, run.config_id, run.seed, 1, 1, run.epochs, "seeded", run.config)
    record_epoch(engine, claim, 2, {"accuracy": 0.5}, None, 60.0)  # as a worker records it
    again = client.get(f"/api/sweeps/{sweep.id}/aggregates", params={"keys": ["accuracy"]}).json()
    col = again["series"][config_id]["accuracy"]
    assert col["epochs"] == [0, 1, 2] and col["n"] == [3, 3, 1] and col["std"][2] is None
    assert again["cursor"] > first["cursor"]


def test_table_has_finals_with_t_intervals_and_axes(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC, upto=lambda pos, seed: 2 if (pos, seed) == (2, 2) else 99)
    body = client.get(f"/api/sweeps/{sweep.id}/table").json()
    (axis,) = body["axes"]
    assert axis["kind"] == "log2" and axis["x"] == [8, 32, 128] and axis["labels"] == ["[8]", "[32]", "[128]"]
    first, _, last = body["configs"]
    xs = np.array([study_curve(0, seed, 4)["val_accuracy"] for seed in range(3)])
    final = first["final"]["val_accuracy"]
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=xs.mean(), scale=scipy_stats.sem(xs))
    assert final["n"] == 3 and final["mean"] == pytest.approx(xs.mean())
    assert (final["ci_low"], final["ci_high"]) == pytest.approx((lo, hi))
    assert first["done"] == 3 and first["status_counts"]["succeeded"] == 3
    assert first["best"]["val_accuracy"]["mean"] == pytest.approx(xs.mean())  # rising curves peak at the end
    assert first["epochs_to_99"] == 3  # 1 - exp(-1.5 e): epoch 3 is the first within 1% of epoch 4
    assert first["wall_seconds"]["mean"] == pytest.approx(2.0)
    assert last["done"] == 2 and last["status_counts"]["running"] == 1 and last["final"]["val_accuracy"]["n"] == 2


def test_compare_states_welch_result(client: TestClient, engine: Engine) -> None:
    a = seed_sweep(engine, {**WIDTHS_SPEC, "name": "a", "grid": {}, "replicates": 5})
    b = seed_sweep(engine, {**WIDTHS_SPEC, "name": "b", "grid": {}, "replicates": 4},
                   curve=lambda pos, seed, epoch: study_curve(3, seed, epoch))
    ids = [charts.config_infos(engine, s.id)[0]["id"] for s in (a, b)]
    body = client.get("/api/compare", params={"configs": f"{ids[0]},{ids[1]}"}).json()
    xa = [study_curve(0, seed, 4)["val_accuracy"] for seed in range(5)]
    xb = [study_curve(3, seed, 4)["val_accuracy"] for seed in range(4)]
    expected = scipy_stats.ttest_ind(xb, xa, equal_var=False)
    (cmp,) = body["comparisons"]
    assert cmp["p"] == pytest.approx(expected.pvalue) and cmp["t"] == pytest.approx(expected.statistic)
    ci = expected.confidence_interval(0.95)
    assert (cmp["ci_low"], cmp["ci_high"]) == pytest.approx((ci.low, ci.high))
    diff = np.mean(np.array(xb, float)) - np.mean(np.array(xa, float))
    assert cmp["sentence"].startswith(f"b is {100 * diff:.1f} ± ")
    assert "5 vs 4 replicates" in cmp["sentence"]


def test_compare_says_when_too_few_replicates(client: TestClient, engine: Engine) -> None:
    a = seed_sweep(engine, {**WIDTHS_SPEC, "name": "one", "grid": {}, "replicates": 1})
    b = seed_sweep(engine, {**WIDTHS_SPEC, "name": "many", "grid": {}, "replicates": 3})
    ids = ",".join(str(charts.config_infos(engine, s.id)[0]["id"]) for s in (a, b))
    (cmp,) = client.get("/api/compare", params={"configs": ids}).json()["comparisons"]
    assert cmp["p"] is None and "Too few replicates" in cmp["sentence"] and "1 vs 3" in cmp["sentence"]


@pytest.mark.parametrize("ids", ["x,1", "", ",".join(str(i) for i in range(1, 30))])
def test_compare_rejects_bad_config_lists(client: TestClient, ids: str) -> None:
    r = client.get("/api/compare", params={"configs": ids})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_compare_unknown_config_is_404(client: TestClient) -> None:
    r = client.get("/api/compare", params={"configs": "999"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "config 999 not found"


def test_config_replicates_on_demand(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC)
    config_id = charts.config_infos(engine, sweep.id)[1]["id"]
    body = client.get(f"/api/configs/{config_id}/series", params={"keys": ["loss"]}).json()
    assert len(body["runs"]) == 3 and {r["config_id"] for r in body["runs"]} == {config_id}
    assert body["runs"][0]["series"]["loss"]["epochs"] == [0, 1, 2, 3, 4]
    assert client.get("/api/configs/999/series").status_code == 404


def test_validate_counts_runs_and_reports_fields(client: TestClient) -> None:
    ok = client.post("/api/sweeps/validate", json=WIDTHS_SPEC).json()
    assert (ok["configs"], ok["replicates"], ok["runs"]) == (3, 3, 9)
    assert "learning_rate" not in ok["spec"]["optimizer"]
    yaml_body = "name: y\nepochs: 2\nseeds: [1, 2]\ngrid: {optimizer.name: [sgd, adam]}\n"
    ok = client.post("/api/sweeps/validate", content=yaml_body, headers={"content-type": "application/yaml"})
    assert ok.json()["runs"] == 4
    bad = client.post("/api/sweeps/validate", json={**WIDTHS_SPEC, "epochs": 0, "model": {"hidden": [0]}})
    assert bad.status_code == 422
    fields = {f["loc"]: f["msg"] for f in bad.json()["error"]["fields"]}
    assert "greater than or equal to 1" in fields["epochs"] and "model.hidden.0" in fields


def test_dataset_summary_and_images(client: TestClient, data_dir: Path) -> None:
    summary = client.get("/api/datasets/mnist").json()
    y = np.load(data_dir / "mnist.npz")["y_train"]
    assert summary["train"]["counts"] == np.bincount(y, minlength=10).tolist() and summary["test"]["n"] == 200
    images = client.get("/api/datasets/mnist/images", params={"split": "test", "count": 10}).json()
    x = np.load(data_dir / "mnist.npz")["x_test"]
    assert len(images["images"]) == 10 and images["images"][3] == x[3].reshape(-1).tolist()


def test_unknown_dataset_is_a_readable_error(client: TestClient) -> None:
    r = client.get("/api/datasets/cifar")
    assert r.status_code == 404 and "dataset 'cifar' is not on this server" in r.json()["error"]["message"]
    page = client.get("/datasets/cifar", headers={"accept": "text/html"})
    assert page.status_code == 404 and "is not on this server" in page.text and "<html" in page.text


def test_missing_dataset_file_is_a_readable_error(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    empty = settings.model_copy(update={"data_dir": tmp_path / "nothing-here"})
    with TestClient(create_app(empty)) as c:
        r = c.get("/datasets/mnist", headers={"accept": "text/html"})
    assert r.status_code == 404 and "is not on this server" in r.text


@pytest.mark.parametrize("values, kind, x", [
    ([0.1, 0.01, 0.001], "log10", [0.1, 0.01, 0.001]),
    ([1, 2, 3], "linear", [1, 2, 3]),
    ([[32, 32], [32, 64], [32, 256]], "log2", [32, 64, 256]),
    ([[], [32], [32, 32]], "category", ["[]", "[32]", "[32, 32]"]),
    (["sgd", "adam"], "category", ["sgd", "adam"]),
])
def test_axes_are_readable(values: list[Any], kind: str, x: list[Any]) -> None:
    path = "model.hidden" if isinstance(values[0], list) else "optimizer.learning_rate"
    axis = axes.describe_axis(path, values)
    assert axis["kind"] == kind and axis["x"] == x
    if kind == "log2":
        assert axis["labels"] == ["[32, 32]", "[32, 64]", "[32, 256]"] and "layer 2" in axis["title"]


def approx_nested(value: Any) -> Any:
    """VALUE with every float compared to 1e-12 relative: far tighter than any real change."""
    if isinstance(value, dict):
        return {k: approx_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_nested(v) for v in value]
    return pytest.approx(value, rel=1e-12) if isinstance(value, float) else value


def test_cached_aggregates_follow_epochs_retries_and_late_rows(client: TestClient, engine: Engine) -> None:
    """The cache recomputes only changed configs; after each kind of change it must equal a fresh read."""
    sweep = seed_sweep(engine, WIDTHS_SPEC, upto=lambda pos, seed: 2)
    url = f"/api/sweeps/{sweep.id}/aggregates"

    def cached_equals_fresh() -> None:
        cached = client.get(url).json()
        charts.memo.clear()
        fresh = client.get(url).json()
        # PostgreSQL may sum a group's rows in any order: equal up to float rounding, not bit for bit.
        assert cached["series"] == approx_nested(fresh["series"])

    cached_equals_fresh()
    runs = list_runs(engine, sweep.id)
    first, last = runs[0], runs[-1]
    claim = Claim(first.id, sweep.id, first.config_id, first.seed, 1, 2, first.epochs, "seeded", first.config)
    record_epoch(engine, claim, 3, {"accuracy": 0.1, "val_accuracy": 0.2, "loss": 3.0, "val_loss": 3.0}, None, 60.0)
    cached_equals_fresh()
    with write_session(engine) as s:  # an epoch that arrives late: no change to the run's last epoch
        s.execute(insert(Metric), [{"run_id": last.id, "key": "loss", "epoch": 4, "value": 9.0, "created_at": 0}])
    cached_equals_fresh()
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == last.id).values(status="failed", lease_token=None))
    client.post(f"/api/sweeps/{sweep.id}/retry")  # deletes the failed run's epochs
    after = client.get(url, params={"keys": ["loss"]}).json()
    col = after["series"][str(last.config_id)]["loss"]
    assert col["n"][0] == 2 and 4 not in col["epochs"]
    cached_equals_fresh()


def test_aggregates_of_some_configs_of_a_sweep(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC)
    ids = [c["id"] for c in charts.config_infos(engine, sweep.id)]
    body = client.get(f"/api/sweeps/{sweep.id}/aggregates", params={"configs": f"{ids[2]}", "keys": ["loss"]}).json()
    assert list(body["series"]) == [str(ids[2])] and [c["id"] for c in body["configs"]] == [ids[2]]
    full = client.get(f"/api/sweeps/{sweep.id}/aggregates", params={"keys": ["loss"]}).json()
    assert body["series"][str(ids[2])] == approx_nested(full["series"][str(ids[2])])
