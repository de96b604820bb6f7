"""The REST API over the real app and a real database: shapes, errors, limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import app.datasets as datasets
from app.config import Settings
from app.main import create_app

CHECK_SPEC = {"name": "check", "dataset": "mnist", "limit": {"train": 200, "test": 50}, "model": {"hidden": [16]},
              "grid": {"model.hidden": [[16], [64]]}, "replicates": 3, "epochs": 3,
              "optimizer": {"name": "adam"}, "loss": "sparse_categorical_crossentropy"}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_create_sweep_queues_every_config_and_seed(api: TestClient) -> None:
    r = api.post("/api/sweeps", json=CHECK_SPEC)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["runs"] == 6 and body["configs"] == 2
    assert body["status_counts"] == {"queued": 6, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                                     "pruned": 0}  # every RunStatus is counted
    runs = api.get(f"/api/sweeps/{body['id']}/runs").json()
    assert sorted((r["config"]["model"]["hidden"][0], r["seed"]) for r in runs) == [
        (16, 0), (16, 1), (16, 2), (64, 0), (64, 1), (64, 2)]
    assert {"id", "status", "seed", "config", "attempt", "error"} <= set(runs[0])
    one = api.get(f"/api/runs/{runs[0]['id']}").json()
    assert one["status"] == "queued" and one["attempt"] == 0
    assert api.get(f"/api/runs/{runs[0]['id']}/metrics").json() == {"run_id": runs[0]["id"], "series": {}}
    assert [s["id"] for s in api.get("/api/sweeps").json()] == [body["id"]]


def test_yaml_specs_are_accepted(api: TestClient) -> None:
    text = "name: from yaml\nmodel: {hidden: [8]}\nreplicates: 2\n"
    r = api.post("/api/sweeps", content=text, headers={"content-type": "application/yaml"})
    assert r.status_code == 201 and r.json()["runs"] == 2


def test_yaml_alias_bombs_are_refused(api: TestClient) -> None:
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\nname: *c\n'
    r = api.post("/api/sweeps", content=bomb, headers={"content-type": "application/yaml"})
    assert r.status_code == 422 and "aliases" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"epochs": 0}, "epochs"), ({"model": {"hidden": [-1]}}, "model.hidden.0"), ({"bogus": 1}, "bogus"),
     ({"optimizer": {"name": "adam", "learning_rate": "fast"}}, "optimizer.learning_rate")],
)
def test_invalid_spec_is_a_422_naming_the_field(api: TestClient, patch: dict[str, Any], field: str) -> None:
    r = api.post("/api/sweeps", json={**CHECK_SPEC, **patch})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_spec" and field in err["message"]
    assert field in [f["loc"] for f in err["fields"]]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [('"name": "\\ud800"', "name"), ('"name": "a", "study": "x\\udc00"', "study"),
     ('"name": "a", "grid": {"\\ud800": [1]}', "grid.<key>"),
     ('"name": "a", "grid": {"model.activation": ["relu", "\\ud800"]}', "grid.model.activation.1"),
     ('"name": "a\\u0000b"', "name"), ('"name": "a", "study": "\\u0000"', "study")],
)
def test_text_that_cannot_be_stored_is_a_422_naming_the_field(api: TestClient, body: str, field: str) -> None:
    # Raw JSON: the escapes reach the server as a lone surrogate or a NUL, as a hostile client sends them.
    r = api.post("/api/sweeps", content="{" + body + "}", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_spec" and [f["loc"] for f in err["fields"]] == [field]
    assert err["message"].startswith(f"{field}: text with a ")
    assert api.get("/api/sweeps").json() == []


def test_filters_with_text_that_cannot_be_stored(api: TestClient) -> None:
    sweep = api.post("/api/sweeps", json={**CHECK_SPEC, "study": "s"}).json()
    run_id = api.get(f"/api/sweeps/{sweep['id']}/runs").json()[0]["id"]
    for study in ("%00", "a%00b", "%ED%A0%80"):  # NUL, and UTF-8 bytes of a surrogate (decoded as U+FFFD)
        r = api.get(f"/api/sweeps?study={study}")
        assert r.status_code == 200 and r.json() == [], r.text
    r = api.get(f"/api/runs/{run_id}/metrics?keys=a%00b")
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "query.keys.0"
    assert api.get(f"/api/runs/{run_id}/metrics?keys=%ED%A0%80").json()["series"] == {}


def test_not_json_is_a_clear_422(api: TestClient) -> None:
    r = api.post("/api/sweeps", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]


def test_too_many_runs_is_a_422(api: TestClient) -> None:
    r = api.post("/api/sweeps", json={**CHECK_SPEC, "replicates": 1000, "grid": {"epochs": list(range(1, 12))}})
    assert r.status_code == 422 and "at most 10000" in r.json()["error"]["message"]


def test_body_over_the_limit_is_a_413(api: TestClient) -> None:
    r = api.post("/api/sweeps", content=b"x" * 1_100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_missing_dataset_is_refused_at_submit(api: TestClient, settings: Settings) -> None:
    api.app.state.settings = settings.model_copy(  # type: ignore[attr-defined]
        update={"data_dir": settings.artifacts_dir / "nowhere"})
    datasets._reachable_checked[:] = [1e18, 0.0]  # offline, as on this machine
    try:
        r = api.post("/api/sweeps", json=CHECK_SPEC)
    finally:
        datasets._reachable_checked[:] = [-1e9, 0.0]
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "mnist" in message and "SWEEPLAB_DATA_DIR" in message


@pytest.mark.parametrize("path", ["/api/sweeps/999", "/api/sweeps/999/runs", "/api/runs/999", "/api/runs/999/metrics"])
def test_unknown_ids_are_404_with_the_error_envelope(api: TestClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 404
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "not_found"


def test_cancel_endpoints(api: TestClient) -> None:
    sweep = api.post("/api/sweeps", json=CHECK_SPEC).json()
    run_id = api.get(f"/api/sweeps/{sweep['id']}/runs").json()[0]["id"]
    assert api.post(f"/api/runs/{run_id}/cancel").json()["status"] == "cancelled"
    assert api.post(f"/api/runs/{run_id}/cancel").json()["status"] == "cancelled"
    after = api.post(f"/api/sweeps/{sweep['id']}/cancel").json()
    assert after["status_counts"]["cancelled"] == 6
    retried = api.post(f"/api/sweeps/{sweep['id']}/retry").json()
    assert retried["status_counts"]["queued"] == 6
    assert api.post("/api/runs/999/cancel").status_code == 404


def test_health_and_openapi(api: TestClient) -> None:
    assert api.get("/api/health").json()["status"] == "ok"
    schema = api.get("/openapi.json").json()
    assert "/api/sweeps" in schema["paths"] and "SweepSpec" in schema["components"]["schemas"]


def test_presets_submit_the_whole_study(api: TestClient) -> None:
    presets = {p["name"]: p for p in api.get("/api/presets").json()}
    assert presets["mnist-study"]["runs"] == 181
    created = api.post("/api/presets/mnist-study")
    assert created.status_code == 201
    assert sum(s["runs"] for s in created.json()) == 181 and len(created.json()) == 10
    assert api.post("/api/presets/nope").status_code == 404


def test_html_pages_answer_errors_as_pages(api: TestClient) -> None:
    r = api.get("/sweeps/999", headers={"accept": "text/html"})
    assert r.status_code == 404 and "text/html" in r.headers["content-type"] and "sweep 999 not found" in r.text
