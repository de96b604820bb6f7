"""The external-run endpoints: create or join, log epochs idempotently, finish; limits and guards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from app.config import Settings
from app.errors import InvalidSpec
from app.main import create_app
from app.metrics import KEY_CHARS
from app.services import external as external_service
from tests.factories import get_run, make_sweep, metric_rows, runs_of


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def start_run(api: TestClient, **body: Any) -> dict[str, Any]:
    response = api.post("/api/external/runs", json={"sweep": "notebook", "config": {"hidden": [32]}, "seed": 0,
                                                    **body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def test_runs_join_the_sweep_by_name_and_group_by_config(api: TestClient) -> None:
    a = start_run(api, seed=0, epochs=5)
    b = start_run(api, seed=1, config={"hidden": [32]})
    c = start_run(api, seed=0, config={"hidden": [64]})
    assert a["sweep_id"] == b["sweep_id"] == c["sweep_id"]
    assert a["config_id"] == b["config_id"] != c["config_id"]
    assert (a["source"], a["status"], a["epochs"], a["config_label"]) == ("external", "running", 5, "hidden=[32]")
    sweep = api.get(f"/api/sweeps/{a['sweep_id']}").json()
    assert (sweep["name"], sweep["dataset"], sweep["runs"], sweep["configs"]) == ("notebook", "external", 3, 2)
    assert sweep["spec"]["external"] is True
    configs = api.get(f"/api/sweeps/{a['sweep_id']}/configs").json()
    assert [cfg["position"] for cfg in configs] == [0, 1]
    assert configs[0]["config"] == {"hidden": [32]}
    # Another study, or a name only a queued sweep has, makes a sweep of its own.
    assert start_run(api, study="other")["sweep_id"] != a["sweep_id"]


def test_queued_sweeps_of_the_same_name_are_not_joined(api: TestClient, engine: Engine) -> None:
    queued = make_sweep(engine, name="notebook")
    assert start_run(api)["sweep_id"] != queued.id


def test_a_retried_create_returns_the_same_run(api: TestClient) -> None:
    first = start_run(api, client_token="abcdef0123456789")
    again = api.post("/api/external/runs", json={"sweep": "notebook", "config": {"hidden": [32]}, "seed": 0,
                                                 "client_token": "abcdef0123456789"})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert api.get(f"/api/sweeps/{first['sweep_id']}").json()["runs"] == 1


def test_epochs_are_idempotent(api: TestClient, engine: Engine) -> None:
    run = start_run(api)
    body = {"epoch": 1, "metrics": {"loss": 0.5, "accuracy": 0.8, "val_accuracy": None}, "seconds": 2.0}
    first = api.post(f"/api/runs/{run['id']}/epochs", json=body)
    assert first.status_code == 200, first.text
    assert first.json() == {"run_id": run["id"], "epoch": 1, "stored": 3, "cancel_requested": False}
    retried = api.post(f"/api/runs/{run['id']}/epochs", json={**body, "metrics": {"loss": 9.0}})
    assert retried.json()["stored"] == 0
    assert api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 0, "metrics": {"loss": 1.0}}).status_code == 200
    assert metric_rows(engine, run["id"]) == [("accuracy", 1, 0.8), ("loss", 0, 1.0), ("loss", 1, 0.5),
                                              ("val_accuracy", 1, None)]
    row = get_run(engine, run["id"])
    assert (row.last_epoch, row.train_seconds) == (1, 2.0)  # an earlier epoch arriving late keeps last_epoch


@pytest.mark.parametrize("body", [
    {"epoch": -1, "metrics": {"loss": 1.0}},
    {"epoch": 100_001, "metrics": {"loss": 1.0}},
    {"epoch": 1, "metrics": {"x" * (KEY_CHARS + 1): 1.0}},
    {"epoch": 1, "metrics": {"": 1.0}},
    {"epoch": 1, "metrics": {"bad\nkey": 1.0}},
    {"epoch": 1, "metrics": {f"k{i}": 1.0 for i in range(65)}},
    {"epoch": 1, "metrics": {"loss": "high"}},
    {"epoch": 1, "metrics": {"loss": 1.0}, "extra": 1},
])
def test_invalid_epochs_are_422(api: TestClient, body: dict[str, Any]) -> None:
    run = start_run(api)
    assert api.post(f"/api/runs/{run['id']}/epochs", json=body).status_code == 422


def test_nan_and_infinity_are_refused_as_values(api: TestClient) -> None:
    run = start_run(api)
    for literal in ("NaN", "Infinity"):
        raw = f'{{"epoch": 1, "metrics": {{"loss": {literal}}}}}'
        response = api.post(f"/api/runs/{run['id']}/epochs", content=raw,
                            headers={"content-type": "application/json"})
        assert response.status_code == 422


@pytest.mark.parametrize("body", [
    {"sweep": " ", "seed": 0},
    {"sweep": "s", "seed": -1},
    {"sweep": "s", "seed": 0, "epochs": 100_001},
    {"sweep": "s", "seed": 0, "config": [1, 2]},
    {"sweep": "s", "seed": 0, "config": {"a": "x" * 20_000}},
    {"sweep": "s", "seed": 0, "client_token": "short"},
    {"sweep": "s" * 201, "seed": 0},
])
def test_invalid_creates_are_422(api: TestClient, body: dict[str, Any]) -> None:
    assert api.post("/api/external/runs", json=body).status_code == 422


def test_finish_and_what_follows(api: TestClient) -> None:
    run = start_run(api)
    done = api.post(f"/api/runs/{run['id']}/finish", json={"status": "failed", "error": "out of memory"})
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["error"]) == ("failed", "out of memory")
    assert done.json()["finished_at"] is not None
    assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "failed"}).status_code == 200
    again = api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"
    late = api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 3, "metrics": {"loss": 1.0}})
    assert late.status_code == 409
    assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "queued"}).status_code == 422


def test_a_cancel_request_reaches_the_trainer_and_ends_the_run_cancelled(api: TestClient) -> None:
    run = start_run(api)
    assert api.post(f"/api/runs/{run['id']}/cancel").json()["cancel_requested"] is True
    ack = api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": {"loss": 1.0}}).json()
    assert ack["cancel_requested"] is True
    assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).json()["status"] == "cancelled"


def test_queued_runs_refuse_epochs_and_finish(api: TestClient, engine: Engine) -> None:
    run_id = runs_of(engine, make_sweep(engine).id)[0].id
    epoch = api.post(f"/api/runs/{run_id}/epochs", json={"epoch": 1, "metrics": {"loss": 1.0}})
    assert epoch.status_code == 409
    assert set(epoch.json()["error"]) == {"code", "message", "fields"} and epoch.json()["error"]["fields"] == []
    assert api.post(f"/api/runs/{run_id}/finish", json={"status": "succeeded"}).status_code == 409
    assert api.post("/api/runs/999999/epochs", json={"epoch": 1, "metrics": {}}).status_code == 404


def test_the_run_limit_of_a_sweep_holds(settings: Settings, engine: Engine) -> None:
    small = settings.model_copy(update={"max_runs_per_sweep": 2})
    with TestClient(create_app(small), raise_server_exceptions=False) as api:
        start_run(api, seed=0)
        start_run(api, seed=1)
        refused = api.post("/api/external/runs", json={"sweep": "notebook", "seed": 2})
        assert refused.status_code == 422
        assert "at most 2" in refused.json()["error"]["message"]


def test_the_endpoints_need_the_token_when_one_is_set(settings: Settings, engine: Engine) -> None:
    guarded = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(guarded), raise_server_exceptions=False) as api:
        body = {"sweep": "notebook", "seed": 0}
        assert api.post("/api/external/runs", json=body).status_code == 401
        ok = api.post("/api/external/runs", json=body, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        run_id = ok.json()["id"]
        assert api.post(f"/api/runs/{run_id}/epochs", json={"epoch": 1, "metrics": {}}).status_code == 401
        assert api.post(f"/api/runs/{run_id}/finish", json={"status": "succeeded"}).status_code == 401


def field_errors(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(loc, msg) of each field of a 422's envelope, {"error": {"fields": [{"loc", "msg"}]}}."""
    return [(f["loc"], f["msg"]) for f in body["error"]["fields"]]


@pytest.mark.parametrize(("raw", "field", "words"), [
    ('{"sweep": "a\\ud800", "seed": 0}', "sweep", "unicode"),
    ('{"sweep": "a", "study": "\\udfff", "seed": 0}', "study", "unicode"),
    ('{"sweep": "a", "host": "\\ud800x", "seed": 0}', "host", "unicode"),
    ('{"sweep": "a", "dataset": "\\ud800", "seed": 0}', "dataset", "unicode"),
    ('{"sweep": "a", "seed": 0, "config": {"k\\ud800": 1}}', "config", "config.<key>: text with a lone surrogate"),
    ('{"sweep": "a", "seed": 0, "config": {"opt": {"name": "\\udc00"}}}', "config", "config.opt.name: text with"),
    ('{"sweep": "a", "seed": 0, "config": {"k": ["x", "\\ud800"]}}', "config", "config.k.1: text with"),
    ('{"sweep": "a\\u0000", "seed": 0}', "sweep", "NUL"),
    ('{"sweep": "a", "seed": 0, "config": {"k\\u0000": 1}}', "config", "config.<key>: must not contain a NUL"),
])
def test_text_the_databases_cannot_store_is_a_422_naming_the_field(api: TestClient, raw: str, field: str,
                                                                   words: str) -> None:
    response = api.post("/api/external/runs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [(loc, msg)] = field_errors(response.json())
    assert loc == field
    assert words in msg
    assert api.get("/api/sweeps").status_code == 200  # nothing half-stored


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("epochs", '{"epoch": 1, "metrics": {"loss\\ud800": 1.0}}', "metrics"),
    ("finish", '{"status": "failed", "error": "x\\udc00"}', "error"),
    ("finish", '{"status": "failed", "error": "x\\u0000"}', "error"),
])
def test_epochs_and_finish_refuse_unstorable_text(api: TestClient, path: str, raw: str, field: str) -> None:
    run = start_run(api)
    response = api.post(f"/api/runs/{run['id']}/{path}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field_errors(response.json())[0][0].split(".")[0] == field
    assert api.get(f"/api/runs/{run['id']}").json()["status"] == "running"


def test_the_service_refuses_unstorable_config_too(engine: Engine) -> None:
    req = external_service.ExternalRunRequest(sweep="s", config={"a": {"b\ud800": 1}}, seed=0)
    with pytest.raises(InvalidSpec, match=r"config\.a\.<key>: text with a lone surrogate"):
        external_service.create_external_run(engine, req, 10)
