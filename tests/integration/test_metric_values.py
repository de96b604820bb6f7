"""Non-finite metric values are stored one way whoever reports them (app.models.metric_value):
a worker's record_epoch and an external run's epoch (service, and HTTP where JSON names them
"NaN", "Infinity", "-Infinity") store inf and -inf as themselves and NaN as NULL; the API
answers null for all three."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.services import external as external_service
from app.services.queue import claim_runs, record_epoch
from tests.factories import make_sweep, metric_rows

REPORTED = {"a_nan": math.nan, "b_inf": math.inf, "c_minus_inf": -math.inf, "d_finite": 0.25}
STORED = [("a_nan", 1, None), ("b_inf", 1, math.inf), ("c_minus_inf", 1, -math.inf), ("d_finite", 1, 0.25)]


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_worker_path_stores_non_finite_values_explicitly(engine: Engine, api: TestClient) -> None:
    make_sweep(engine, replicates=1)
    [claim] = claim_runs(engine, "w", 1, 60.0)
    record_epoch(engine, claim, 1, REPORTED, None, 60.0)
    assert metric_rows(engine, claim.run_id) == STORED
    series = api.get(f"/api/runs/{claim.run_id}/metrics").json()["series"]
    assert {k: s["values"] for k, s in series.items()} == {"a_nan": [None], "b_inf": [None],
                                                           "c_minus_inf": [None], "d_finite": [0.25]}


def test_the_external_path_stores_them_as_the_worker_path_does(engine: Engine, api: TestClient) -> None:
    run, _ = external_service.create_external_run(
        engine, external_service.ExternalRunRequest(sweep="nonfinite", config={}, seed=0), 100)
    external_service.record_external_epoch(engine, run.id, 1, REPORTED)
    assert metric_rows(engine, run.id) == STORED
    series = api.get(f"/api/runs/{run.id}/metrics").json()["series"]
    assert [s["values"] for s in series.values()] == [[None], [None], [None], [0.25]]


def test_over_http_the_values_go_by_name_and_are_stored_alike(api: TestClient, engine: Engine) -> None:
    run = api.post("/api/external/runs", json={"sweep": "nonfinite", "config": {}, "seed": 0}).json()
    named = {"a_nan": "NaN", "b_inf": "Infinity", "c_minus_inf": "-Infinity", "d_finite": 0.25}
    answer = api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": named})
    assert answer.status_code == 200, answer.text
    assert metric_rows(engine, run["id"]) == STORED
    assert api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 2, "metrics": {"x": "inf"}}).status_code == 422
