"""The real MLflow client (mlflow-skinny, a dev dependency) against a live server with an API token,
in a process of its own with only MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN set: the fluent API
(set_experiment, start_run, log_params, log_metric(step=), log_metrics, set_tag, end_run(FAILED),
search_runs), MlflowClient's history and tags, its errors, and mlflow.tensorflow.autolog(
log_models=False) around a small model.fit. What it logged is then read through sweeplab's own API
and compared with what the script computed itself (and with Keras' History)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.migrate import migrate
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow
TOKEN = "mlflow-e2e-token"
SCRIPT = r'''
import json, os
import numpy as np
import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

out = {"errors": {}}
client = mlflow.MlflowClient()
mlflow.set_experiment("client")
ids = []
for seed in range(3):
    with mlflow.start_run() as run:
        mlflow.log_params({"hidden": 32, "optimizer": "adam", "seed": seed})
        mlflow.set_tag("note", "replicate")
        for step in range(4):
            mlflow.log_metric("val_accuracy", 0.5 + 0.1 * step + 0.01 * seed, step=step)
            mlflow.log_metrics({"loss": 1.0 - 0.1 * step, "accuracy": 0.55 + 0.1 * step}, step=step)
        ids.append(run.info.run_id)
mlflow.start_run()
mlflow.log_params({"hidden": 64, "optimizer": "adam", "seed": 0})
mlflow.log_metric("val_accuracy", 0.7, step=0)
try:
    mlflow.log_param("hidden", 65)
except MlflowException as e:
    out["errors"]["changed param"] = e.error_code
try:
    mlflow.log_metric("val_accuracy", 0.7, step=-1)
except MlflowException as e:
    out["errors"]["negative step"] = e.error_code
out["failed"] = mlflow.active_run().info.run_id
mlflow.end_run(status="FAILED")
out["ids"] = ids
out["search"] = len(mlflow.search_runs(experiment_names=["client"], output_format="list"))
best = mlflow.search_runs(experiment_names=["client"], filter_string="params.hidden = '32'",
                          order_by=["metrics.val_accuracy DESC"], output_format="list")
out["best"] = [r.info.run_id for r in best]
out["history"] = [[m.step, m.value] for m in client.get_metric_history(ids[0], "val_accuracy")]
client.delete_tag(ids[0], "note")
out["tags"] = sorted(k for k in client.get_run(ids[0]).data.tags if not k.startswith("mlflow."))
out["params"] = client.get_run(ids[1]).data.params
try:
    client.get_experiment("999999")
except MlflowException as e:
    out["errors"]["unknown experiment"] = e.error_code
try:
    client.log_batch(ids[1], metrics=[Metric("loss", 0.1, 0, 9)])
except MlflowException as e:
    out["errors"]["ended run"] = e.error_code

import keras
mlflow.set_experiment("autolog")
mlflow.tensorflow.autolog(log_models=False)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.random((128, 8)).astype("float32")
y = (x.sum(axis=1) > 4).astype("int32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
                          keras.layers.Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, epochs=2, batch_size=32, validation_split=0.25, verbose=0)
out["keras"] = history.history
out["autolog"] = mlflow.last_active_run().info.run_id
out["artifacts"] = sorted(f.path for f in client.list_artifacts(out["autolog"]))
out["summary"] = mlflow.artifacts.load_text(mlflow.last_active_run().info.artifact_uri + "/model_summary.txt")
print("RESULT " + json.dumps(out))
'''


@pytest.fixture
def server(database_url: str, data_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(database_url, data_dir, tmp_path / "artifacts", api_token=SecretStr(TOKEN))
    migrate(database_url)
    live = LiveServer(settings, tmp_path / "server.log").start()
    yield live
    live.stop()


def run_client(server: LiveServer, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEPLAB_", "MLFLOW_"))}
    # The client retries 429 and 5xx (a busy database answers 503): a few quick tries, not minutes of them.
    env.update(MLFLOW_TRACKING_URI=server.url, MLFLOW_TRACKING_TOKEN=TOKEN, TF_CPP_MIN_LOG_LEVEL="2",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="3", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-2000:], done.stderr[-4000:])
    assert "Encountered unexpected error during" not in done.stderr, done.stderr[-4000:]  # autolog's own warning
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def sweep_named(api: httpx.Client, name: str) -> dict[str, Any]:
    found = [s for s in api.get("/api/sweeps").json() if s["name"] == name]
    assert len(found) == 1, found
    return found[0]


def test_the_mlflow_client_logs_into_sweeplab(server: LiveServer, tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_client(server, tmp_path)
    took = time.monotonic() - started
    api = httpx.Client(base_url=server.url, timeout=10)

    # Three seeds of one config are replicates of one config; the FAILED run ended failed.
    sweep = sweep_named(api, "client")
    runs = {str(r["id"]): r for r in api.get(f"/api/sweeps/{sweep['id']}/runs").json()}
    assert set(runs) == {*out["ids"], out["failed"]}
    ok = [runs[i] for i in out["ids"]]
    assert [r["status"] for r in ok] == ["succeeded"] * 3 and runs[out["failed"]]["status"] == "failed"
    assert len({r["config_id"] for r in ok}) == 1 and [r["seed"] for r in ok] == [0, 1, 2]
    assert ok[0]["config"] == {"hidden": 32, "optimizer": "adam"}
    assert runs[out["failed"]]["config"] == {"hidden": 64, "optimizer": "adam"}
    configs = api.get(f"/api/sweeps/{sweep['id']}/configs").json()
    assert sorted(c["id"] for c in configs) == sorted({r["config_id"] for r in runs.values()})  # none left empty
    for seed, run in enumerate(ok):
        series = api.get(f"/api/runs/{run['id']}/metrics").json()["series"]
        assert series["val_accuracy"]["epochs"] == [0, 1, 2, 3]
        assert series["val_accuracy"]["values"] == pytest.approx([0.5 + 0.1 * s + 0.01 * seed for s in range(4)])
        assert series["loss"]["values"] == pytest.approx([1.0 - 0.1 * s for s in range(4)])
        assert series["accuracy"]["values"] == pytest.approx([0.55 + 0.1 * s for s in range(4)])
    # The replicates are one row of the results table, as a queued sweep's would be.
    table = api.get(f"/api/sweeps/{sweep['id']}/table").json()["configs"]
    row = next(c for c in table if c["id"] == ok[0]["config_id"])
    final = row["final"]["val_accuracy"]
    assert (final["n"], final["seeds"]) == (3, [0, 1, 2])
    assert final["mean"] == pytest.approx(sum(0.8 + 0.01 * s for s in range(3)) / 3)

    # What the client read back, and MLflow's error codes for what the server refused.
    assert out["search"] == 4
    assert out["best"] == list(reversed(out["ids"]))
    assert [s for s, _ in out["history"]] == [0, 1, 2, 3]
    assert [v for _, v in out["history"]] == pytest.approx([0.5 + 0.1 * s for s in range(4)])
    assert out["tags"] == [] and out["params"] == {"hidden": "32", "optimizer": "adam", "seed": "1"}
    assert out["errors"] == {"changed param": "INVALID_PARAMETER_VALUE", "negative step": "INVALID_PARAMETER_VALUE",
                             "unknown experiment": "RESOURCE_DOES_NOT_EXIST", "ended run": "INVALID_STATE"}

    # autolog(log_models=False): every epoch of Keras' History, its params, its small artifacts.
    auto = api.get(f"/api/runs/{out['autolog']}").json()
    assert auto["status"] == "succeeded" and auto["config"]["epochs"] == 2 and auto["config"]["batch_size"] == 32
    series = api.get(f"/api/runs/{out['autolog']}/metrics").json()["series"]
    for key, values in out["keras"].items():
        assert series[key]["epochs"] == [0, 1], key  # Keras' epoch index, as MLflow shows it
        assert series[key]["values"] == pytest.approx(values, rel=1e-6), key
    assert {"model_summary.txt", "tensorboard_logs"} <= set(out["artifacts"])
    assert "dense" in out["summary"].lower()
    assert took < 200, took


def test_mlflow_routes_refuse_in_mlflows_shape(server: LiveServer) -> None:
    api = httpx.Client(base_url=f"{server.url}/api/2.0/mlflow", timeout=10)
    auth = {"authorization": f"Bearer {TOKEN}"}
    unauthorized = api.post("/experiments/create", json={"name": "x"})
    assert (unauthorized.status_code, unauthorized.json()["error_code"]) == (401, "UNAUTHENTICATED")
    eid = api.post("/experiments/create", json={"name": "x"}, headers=auth).json()["experiment_id"]
    run_id = api.post("/runs/create", json={"experiment_id": eid}, headers=auth).json()["run"]["info"]["run_id"]
    cases = {
        "unknown experiment": (api.post("/runs/create", json={"experiment_id": "424242"}, headers=auth), 404,
                               "RESOURCE_DOES_NOT_EXIST"),
        "bad metric value": (api.post("/runs/log-metric", json={"run_id": run_id, "key": "loss", "value": "high"},
                                      headers=auth), 400, "INVALID_PARAMETER_VALUE"),
        "oversized batch": (api.post("/runs/log-batch", headers=auth, json={
            "run_id": run_id, "metrics": [{"key": "m", "value": 1, "step": i} for i in range(1001)]}), 400,
            "INVALID_PARAMETER_VALUE"),
        "body over the limit": (api.post("/runs/log-batch", headers={**auth, "content-type": "application/json"},
                                         content=b" " * 2_000_000), 413, "INVALID_PARAMETER_VALUE"),
    }
    for what, (answer, status, code) in cases.items():
        assert answer.status_code == status, (what, answer.text[:300])
        assert answer.json().keys() == {"error_code", "message"} and answer.json()["error_code"] == code, what
    assert httpx.get(f"{server.url}/api/runs/{run_id}/metrics").json()["series"] == {}
