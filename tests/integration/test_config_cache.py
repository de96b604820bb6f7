"""Configs that appear after a sweep's charts were first drawn: an external run logging a new config,
and an MLflow run that moves to the config of its params. The cached chart answers (app.services.memo)
must show them at once, and never the config a run left."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def log_external(api: TestClient, config: dict[str, Any], seed: int, value: float) -> int:
    run = api.post("/api/external/runs", json={"sweep": "late-configs", "config": config, "seed": seed})
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    assert api.post(f"/api/runs/{rid}/epochs", json={"epoch": 1, "metrics": {"val_accuracy": value}}).status_code < 300
    assert api.post(f"/api/runs/{rid}/finish", json={"status": "succeeded"}).status_code == 200
    return int(run.json()["sweep_id"])


def drawn(api: TestClient, sweep_id: int) -> dict[str, Any]:
    """The config ids of the table and of the aggregates, and the table's n per config label."""
    table = api.get(f"/api/sweeps/{sweep_id}/table").json()
    aggregates = api.get(f"/api/sweeps/{sweep_id}/aggregates", params={"keys": "val_accuracy"}).json()
    return {"table": sorted(c["id"] for c in table["configs"]),
            "aggregates": sorted(c["id"] for c in aggregates["configs"]),
            "n": {c["label"]: c["final"]["val_accuracy"]["n"] for c in table["configs"]}}


def test_a_config_logged_after_the_first_draw_is_drawn(api: TestClient) -> None:
    sweep_id = log_external(api, {"width": 8}, 0, 0.8)
    first = drawn(api, sweep_id)
    assert len(first["table"]) == 1 and first["aggregates"] == first["table"]
    log_external(api, {"width": 16}, 0, 0.9)
    later = drawn(api, sweep_id)
    assert len(later["table"]) == 2 and later["aggregates"] == later["table"]
    assert set(first["table"]) < set(later["table"])


def test_an_mlflow_run_moving_to_its_params_config_is_drawn_there(api: TestClient) -> None:
    api_path = "/api/2.0/mlflow"
    eid = api.post(f"{api_path}/experiments/create", json={"name": "moving"}).json()["experiment_id"]
    run_id = api.post(f"{api_path}/runs/create", json={"experiment_id": eid}).json()["run"]["info"]["run_id"]
    answer = api.post(f"{api_path}/runs/log-metric",
                      json={"run_id": run_id, "key": "val_accuracy", "value": 0.7, "timestamp": 1, "step": 1})
    assert answer.status_code == 200, answer.text
    before = drawn(api, int(eid))  # the run is in the empty config: drawn and cached there
    assert len(before["table"]) == 1
    answer = api.post(f"{api_path}/runs/log-parameter", json={"run_id": run_id, "key": "width", "value": "32"})
    assert answer.status_code == 200, answer.text
    after = drawn(api, int(eid))
    assert len(after["table"]) == 1 and after["table"] != before["table"]  # the config it left is gone
    assert after["aggregates"] == after["table"]
    assert after["n"] == {next(iter(after["n"])): 0}  # still running: no final yet, in its new config
