"""MLflow's tracking protocol in process (the real client against a live server: tests/e2e/
test_mlflow_client.py): experiments as external sweeps, a run moving to the config of its params,
seeds as replicates, steps as epochs stored once, statuses, search, artifacts, tokens, limits, and
MLflow's error shape {"error_code", "message"} on every refusal of these routes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select

from app.config import Settings
from app.db import read_session
from app.main import create_app
from app.metrics import KEY_CHARS
from app.models import Config, Run
from app.services import external as external_service
from app.services import mlflow_experiments, mlflow_runs
from tests.conftest import make_settings
from tests.factories import get_run, make_sweep, metric_rows, runs_of
from tests.faults import database_away

API = "/api/2.0/mlflow"


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def refused(response: httpx.Response, status: int, error_code: str) -> str:
    """MLflow's error shape, exactly: error_code and message, nothing else; answers the message."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == error_code, body
    assert isinstance(body["message"], str) and body["message"]
    message: str = body["message"]
    return message


def experiment(api: TestClient, name: str = "exp") -> str:
    eid: str = ok(api.post(f"{API}/experiments/create", json={"name": name}))["experiment_id"]
    return eid


def new_run(api: TestClient, eid: str, **body: Any) -> str:
    run = ok(api.post(f"{API}/runs/create", json={"experiment_id": eid, "start_time": 1, **body}))["run"]
    run_id: str = run["info"]["run_id"]
    return run_id


def log(api: TestClient, run_id: str, **body: Any) -> httpx.Response:
    return api.post(f"{API}/runs/log-batch", json={"run_id": run_id, **body})


def params(**values: Any) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in values.items()]


def run_of(api: TestClient, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = ok(api.get(f"{API}/runs/get", params={"run_id": run_id}))["run"]
    return run


def configs_with_runs(engine: Engine, sweep_id: int) -> tuple[list[int], set[int]]:
    """The sweep's config ids, and the config ids its runs are in."""
    with read_session(engine) as s:
        configs = list(s.scalars(select(Config.id).where(Config.sweep_id == sweep_id).order_by(Config.id)))
        used = set(s.scalars(select(Run.config_id).where(Run.sweep_id == sweep_id)))
    return configs, used


def test_experiments_are_external_sweeps(api: TestClient, engine: Engine) -> None:
    eid = experiment(api, "exp")
    sweep = api.get(f"/api/sweeps/{eid}").json()
    assert (sweep["name"], sweep["spec"]["external"], sweep["runs"]) == ("exp", True, 0)
    got = ok(api.get(f"{API}/experiments/get", params={"experiment_id": eid}))["experiment"]
    assert (got["experiment_id"], got["name"], got["lifecycle_stage"]) == (eid, "exp", "active")
    assert ok(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": "exp"}))["experiment"] == got
    assert "already exists" in refused(api.post(f"{API}/experiments/create", json={"name": "exp"}),
                                       400, "RESOURCE_ALREADY_EXISTS")
    refused(api.get(f"{API}/experiments/get", params={"experiment_id": "999"}), 404, "RESOURCE_DOES_NOT_EXIST")
    refused(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": "nope"}), 404,
            "RESOURCE_DOES_NOT_EXIST")
    # A queued sweep is read by its id, never found by name, and takes no MLflow runs.
    queued = make_sweep(engine, name="queued")
    assert ok(api.get(f"{API}/experiments/get", params={"experiment_id": str(queued.id)}))["experiment"]["name"] == \
        "queued"
    refused(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": "queued"}), 404,
            "RESOURCE_DOES_NOT_EXIST")
    assert "queue" in refused(api.post(f"{API}/runs/create", json={"experiment_id": str(queued.id)}),
                              400, "INVALID_PARAMETER_VALUE")
    experiment(api, "other")
    listed = ok(api.post(f"{API}/experiments/search", json={"filter": "name LIKE 'ex%'"}))["experiments"]
    assert [e["name"] for e in listed] == ["exp"]
    names = [e["name"] for e in ok(api.get(f"{API}/experiments/search"))["experiments"]]
    assert names == ["other", "exp"]  # newest first; external sweeps only


def test_the_default_experiment_is_made_by_its_first_run(api: TestClient) -> None:
    assert ok(api.get(f"{API}/experiments/get", params={"experiment_id": "0"}))["experiment"]["name"] == "Default"
    first = run_of(api, new_run(api, "0"))
    second = run_of(api, new_run(api, "0"))
    assert first["info"]["experiment_id"] == second["info"]["experiment_id"] != "0"
    sweep = api.get(f"/api/sweeps/{first['info']['experiment_id']}").json()
    assert (sweep["name"], sweep["runs"]) == ("Default", 2)
    found = ok(api.post(f"{API}/runs/search", json={"experiment_ids": ["0"]}))["runs"]
    assert {r["info"]["run_id"] for r in found} == {first["info"]["run_id"], second["info"]["run_id"]}


def test_params_move_a_run_to_its_config_and_equal_params_are_replicates(api: TestClient, engine: Engine) -> None:
    eid = experiment(api)
    # Three seeds of one config, logged in pieces and in different orders; one other config.
    plans = [
        [params(hidden=32), params(lr="0.001", seed=0)],
        [params(lr="0.001", seed=1, hidden=32)],
        [params(seed=2), params(lr="0.001"), params(hidden=32)],
        [params(hidden=64, lr="1e-3")],
    ]
    ids = []
    for pieces in plans:
        run_id = new_run(api, eid)
        for piece in pieces:
            ok(log(api, run_id, params=piece))
        ids.append(run_id)
    runs = {str(r["id"]): r for r in api.get(f"/api/sweeps/{eid}/runs").json()}
    assert len({runs[i]["config_id"] for i in ids[:3]}) == 1 and runs[ids[3]]["config_id"] != runs[ids[0]]["config_id"]
    assert [runs[i]["seed"] for i in ids] == [0, 1, 2, 0]
    assert runs[ids[0]]["config"] == {"hidden": 32, "lr": 0.001}  # numbers where the text reads back the same
    assert runs[ids[3]]["config"] == {"hidden": 64, "lr": "1e-3"}
    # Every config left has a run: the provisional and intermediate configs went when their runs left.
    configs, used = configs_with_runs(engine, int(eid))
    assert set(configs) == used and len(configs) == 2
    # MLflow answers exactly the text logged, the seed among the params.
    assert {p["key"]: p["value"] for p in run_of(api, ids[3])["data"]["params"]} == {"hidden": "64", "lr": "1e-3"}
    assert {p["key"]: p["value"] for p in run_of(api, ids[2])["data"]["params"]} == \
        {"hidden": "32", "lr": "0.001", "seed": "2"}
    # Params never change once logged (MLflow's rule); the same value again is fine.
    ok(log(api, ids[0], params=params(hidden=32)))
    assert "never change" in refused(log(api, ids[0], params=params(hidden=33)), 400, "INVALID_PARAMETER_VALUE")
    refused(log(api, ids[0], params=params(seed=5)), 400, "INVALID_PARAMETER_VALUE")
    refused(log(api, new_run(api, eid), params=params(seed="x")), 400, "INVALID_PARAMETER_VALUE")


def test_a_seed_tag_names_the_replicate_too(api: TestClient) -> None:
    eid = experiment(api)
    tagged = new_run(api, eid, tags=[{"key": "seed", "value": "7"}])
    assert get_run_seed(api, tagged) == 7
    later = new_run(api, eid)
    ok(api.post(f"{API}/runs/set-tag", json={"run_id": later, "key": "seed", "value": "3"}))
    assert get_run_seed(api, later) == 3
    ok(api.post(f"{API}/runs/delete-tag", json={"run_id": later, "key": "seed"}))
    assert get_run_seed(api, later) == 0
    refused(api.post(f"{API}/runs/delete-tag", json={"run_id": later, "key": "seed"}), 404, "RESOURCE_DOES_NOT_EXIST")


def get_run_seed(api: TestClient, run_id: str) -> int:
    seed: int = api.get(f"/api/runs/{run_id}").json()["seed"]
    return seed


def test_steps_are_epochs_stored_once_and_retries_store_nothing(api: TestClient, engine: Engine) -> None:
    run_id = new_run(api, experiment(api))
    rid = int(run_id)
    for step in range(3):  # explicit steps, each posted twice (a retry)
        for _ in range(2):
            ok(log(api, run_id, metrics=[{"key": "val_accuracy", "value": 0.5 + step / 10, "timestamp": 10 + step,
                                          "step": step}]))
    # The Python client sends step 0 for "no step": epoch 0 first, then the key's next epochs.
    for i, value in enumerate([0.9, 0.8, 0.8]):
        point = {"key": "score", "value": value, "timestamp": 100 + i, "step": 0}
        ok(api.post(f"{API}/runs/log-metric", json={"run_id": run_id, **point}))
        ok(api.post(f"{API}/runs/log-metric", json={"run_id": run_id, **point}))  # retried: same timestamp
    # A retried step 0 of a key whose later epochs came with steps stores nothing either.
    ok(log(api, run_id, metrics=[{"key": "val_accuracy", "value": 0.5, "timestamp": 10, "step": 0}]))
    # Without step and timestamp (a plain REST client): always the next epoch.
    ok(log(api, run_id, metrics=[{"key": "score", "value": 0.7}, {"key": "score", "value": 0.6}]))
    # Non-finite values: inf stored as such, NaN as null (as a worker's).
    ok(log(api, run_id, metrics=[{"key": "loss", "value": "NaN", "step": 1},
                                 {"key": "loss", "value": "Infinity", "step": 2}]))
    rows = metric_rows(engine, rid)
    assert rows == [("loss", 1, None), ("loss", 2, float("inf")),
                    ("score", 0, 0.9), ("score", 1, 0.8), ("score", 2, 0.8), ("score", 3, 0.7), ("score", 4, 0.6),
                    ("val_accuracy", 0, 0.5), ("val_accuracy", 1, 0.6), ("val_accuracy", 2, 0.7)]
    assert get_run(engine, rid).last_epoch == 4
    latest = {m["key"]: (m["value"], m["step"]) for m in run_of(api, run_id)["data"]["metrics"]}
    assert latest == {"loss": ("Infinity", 2), "score": (0.6, 4), "val_accuracy": (0.7, 2)}
    history = ok(api.get(f"{API}/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}))["metrics"]
    assert [(m["step"], m["value"]) for m in history] == [(1, "NaN"), (2, "Infinity")]
    assert "sweeplab.stepless" not in {t["key"] for t in run_of(api, run_id)["data"]["tags"]}


def test_metric_keys_as_long_as_mlflow_allows_are_stored(api: TestClient, engine: Engine) -> None:
    """MLflow takes keys of up to 250 characters (KEY_CHARS); one character more is refused."""
    run_id = new_run(api, experiment(api))
    key = "a/" + "k" * (KEY_CHARS - 2)
    ok(log(api, run_id, metrics=[{"key": key, "value": 0.25, "step": 1}]))
    ok(api.post(f"{API}/runs/log-metric", json={"run_id": run_id, "key": key, "value": 0.5, "step": 2}))
    assert [r for r in metric_rows(engine, int(run_id)) if r[0] == key] == [(key, 1, 0.25), (key, 2, 0.5)]
    history = ok(api.get(f"{API}/metrics/get-history", params={"run_id": run_id, "metric_key": key}))["metrics"]
    assert [(m["key"], m["step"], m["value"]) for m in history] == [(key, 1, 0.25), (key, 2, 0.5)]
    refused(log(api, run_id, metrics=[{"key": key + "k", "value": 1.0, "step": 3}]), 400, "INVALID_PARAMETER_VALUE")


def test_keras_names_are_the_catalogues(api: TestClient, engine: Engine) -> None:
    run_id = new_run(api, experiment(api))
    ok(log(api, run_id, metrics=[{"key": k, "value": 1.0, "step": 1} for k in
                                 ("epoch_loss", "epoch_val_accuracy", "epoch_seconds", "validation_loss", "epoch_")]))
    assert sorted({k for k, _, _ in metric_rows(engine, int(run_id))}) == \
        ["epoch_", "epoch_seconds", "loss", "val_accuracy", "validation_loss"]


@pytest.mark.parametrize(("mlflow_status", "status"), [("FINISHED", "succeeded"), ("FAILED", "failed"),
                                                       ("KILLED", "cancelled")])
def test_end_run_statuses(api: TestClient, mlflow_status: str, status: str) -> None:
    run_id = new_run(api, experiment(api))
    info = ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": mlflow_status, "end_time": 5}))
    assert info["run_info"]["status"] == mlflow_status and "end_time" in info["run_info"]
    assert api.get(f"/api/runs/{run_id}").json()["status"] == status
    ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": mlflow_status}))  # the same end again
    other = "FAILED" if mlflow_status != "FAILED" else "FINISHED"
    refused(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": other}), 400, "INVALID_STATE")
    refused(log(api, run_id, metrics=[{"key": "loss", "value": 1.0, "step": 1}]), 400, "INVALID_STATE")
    refused(log(api, run_id, params=params(a=1)), 400, "INVALID_STATE")
    ok(api.post(f"{API}/runs/set-tag", json={"run_id": run_id, "key": "note", "value": "after"}))  # MLflow allows
    assert {"key": "note", "value": "after"} in run_of(api, run_id)["data"]["tags"]
    refused(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": "DONE"}), 400, "INVALID_PARAMETER_VALUE")


def test_a_run_asked_to_stop_ends_cancelled_and_a_silent_one_is_reaped(api: TestClient, engine: Engine) -> None:
    eid = experiment(api)
    stopped = new_run(api, eid)
    ok(api.post(f"/api/runs/{stopped}/cancel"))
    ok(api.post(f"{API}/runs/update", json={"run_id": stopped, "status": "FINISHED"}))
    assert run_of(api, stopped)["info"]["status"] == "KILLED"
    silent = new_run(api, eid)
    external_service.reap_stale_external(engine, stale_seconds=0.0)
    assert run_of(api, silent)["info"]["status"] == "FAILED"
    assert "stopped reporting" in refused(log(api, silent, metrics=[{"key": "x", "value": 1.0, "step": 1}]),
                                          400, "INVALID_STATE")


def test_runs_of_the_queue_are_read_only(api: TestClient, engine: Engine) -> None:
    sweep = make_sweep(engine, name="queued")
    run_id = str(runs_of(engine, sweep.id)[0].id)
    assert run_of(api, run_id)["info"]["status"] == "SCHEDULED"
    assert "workers" in refused(log(api, run_id, metrics=[{"key": "loss", "value": 1.0, "step": 1}]), 400,
                                "INVALID_PARAMETER_VALUE")
    refused(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": "FAILED"}), 400,
            "INVALID_PARAMETER_VALUE")
    refused(api.post(f"{API}/runs/set-tag", json={"run_id": run_id, "key": "a", "value": "b"}), 400,
            "INVALID_PARAMETER_VALUE")
    found = ok(api.post(f"{API}/runs/search", json={"experiment_ids": [str(sweep.id)]}))["runs"]
    assert len(found) == len(runs_of(engine, sweep.id))


def test_search_runs_filters_orders_and_pages(api: TestClient) -> None:
    eid = experiment(api)
    made = []
    for i in range(5):
        run_id = new_run(api, eid, run_name=f"r{i}")
        ok(log(api, run_id, params=params(opt="adam" if i % 2 else "sgd", seed=i),
               metrics=[{"key": "acc", "value": i / 10, "step": 1}], tags=[{"key": "note", "value": f"n{i}"}]))
        made.append((run_id, "adam" if i % 2 else "sgd", i / 10))
    ok(api.post(f"{API}/runs/update", json={"run_id": made[0][0], "status": "FINISHED"}))

    def search(**body: Any) -> list[str]:
        return [r["info"]["run_id"] for r in ok(api.post(f"{API}/runs/search",
                                                          json={"experiment_ids": [eid], **body}))["runs"]]

    assert search() == [r for r, _, _ in reversed(made)]  # newest first
    expected = [r for r, opt, acc in sorted(made, key=lambda m: -m[2]) if opt == "adam" and acc > 0.05]
    assert search(filter="metrics.acc > 0.05 and params.opt = 'adam'", order_by=["metrics.acc DESC"]) == expected
    assert search(filter="attributes.status = 'FINISHED'") == [made[0][0]]
    assert search(filter="tags.note IN ('n1', 'n3')", order_by=["attributes.run_name ASC"]) == [made[1][0], made[3][0]]
    assert search(filter="run_name LIKE 'r_'", order_by=["params.seed"]) == [r for r, _, _ in made]
    # Pages of two: the client follows next_page_token.
    seen, token = [], None
    for _ in range(5):
        page = ok(api.post(f"{API}/runs/search", json={"experiment_ids": [eid], "max_results": 2,
                                                       "page_token": token}))
        seen += [r["info"]["run_id"] for r in page["runs"]]
        token = page.get("next_page_token")
        if token is None:
            break
    assert seen == search()
    for bad in ("metrics.acc >", "params.opt > 'a'", "nonsense", "metrics.acc > 1 AND", "foo.bar = 'x'"):
        refused(api.post(f"{API}/runs/search", json={"experiment_ids": [eid], "filter": bad}), 400,
                "INVALID_PARAMETER_VALUE")
    refused(api.post(f"{API}/runs/search", json={"experiment_ids": ["999"]}), 404, "RESOURCE_DOES_NOT_EXIST")
    # Filters made to send a regular expression backtracking (reads need no token) answer at once.
    started = time.monotonic()
    refused(api.post(f"{API}/runs/search", json={"experiment_ids": [eid], "filter": "params.a IN (" + "'x'  " * 300}),
            400, "INVALID_PARAMETER_VALUE")
    assert search(filter="tags.note LIKE '" + "%n" * 90 + "%x'") == []
    assert search(filter="tags.note LIKE '%n%3%'") == [made[3][0]]
    assert time.monotonic() - started < 2
    assert len(ok(api.get(f"{API}/runs/search", params={"experiment_ids": [eid], "filter": "params.opt = 'sgd'"}))[
        "runs"]) == 3


def test_artifacts_are_stored_listed_and_read(api: TestClient, engine: Engine) -> None:
    eid = experiment(api)
    run_id = new_run(api, eid)
    root = f"/api/2.0/mlflow-artifacts/artifacts/{eid}/{run_id}/artifacts"
    assert run_of(api, run_id)["info"]["artifact_uri"] == f"mlflow-artifacts:/{eid}/{run_id}/artifacts"
    ok(api.put(f"{root}/model_summary.txt", content=b"a summary", headers={"content-type": "text/plain"}))
    ok(api.put(f"{root}/logs/train/events.1", content=b"\x00\x01",
               headers={"content-type": "application/octet-stream"}))
    ok(api.put(f"{root}/logs/train/events.1", content=b"\x00\x01\x02"))  # replaced
    listed = ok(api.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{eid}/{run_id}/artifacts"}))
    assert listed["files"] == [{"path": "logs", "is_dir": True},
                               {"path": "model_summary.txt", "is_dir": False, "file_size": 9}]
    inner = ok(api.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{eid}/{run_id}/artifacts/logs/train"}))
    assert inner["files"] == [{"path": "events.1", "is_dir": False, "file_size": 3}]
    got = api.get(f"{root}/model_summary.txt")
    assert (got.status_code, got.content, got.headers["content-type"].split(";")[0]) == (200, b"a summary",
                                                                                         "text/plain")
    assert [a["name"] for a in api.get(f"/api/runs/{run_id}/artifacts").json()] == ["logs/train/events.1",
                                                                                    "model_summary.txt"]
    refused(api.put(f"{root}/a/%2E%2E/%2E%2E/x", content=b"x"), 400, "INVALID_PARAMETER_VALUE")
    refused(api.put(f"{root}/../../x", content=b"x"), 404, "RESOURCE_DOES_NOT_EXIST")  # the client's URL: 1/x
    refused(api.put(f"{root}/{'a' * 101}", content=b"x"), 400, "INVALID_PARAMETER_VALUE")
    refused(api.put(f"/api/2.0/mlflow-artifacts/artifacts/{int(eid) + 1}/{run_id}/artifacts/x", content=b"x"),
            404, "RESOURCE_DOES_NOT_EXIST")
    refused(api.get(f"{root}/missing.txt"), 404, "RESOURCE_DOES_NOT_EXIST")
    refused(api.delete(f"{root}/model_summary.txt"), 404, "ENDPOINT_NOT_FOUND")
    queued = make_sweep(engine, name="queued")
    queued_run = runs_of(engine, queued.id)[0].id
    refused(api.put(f"/api/2.0/mlflow-artifacts/artifacts/{queued.id}/{queued_run}/artifacts/x", content=b"x"),
            400, "INVALID_PARAMETER_VALUE")
    assert "not stored" in refused(api.post(f"{API}/logged-models", json={"experiment_id": eid}),
                                   404, "ENDPOINT_NOT_FOUND")


BAD = [
    ("unknown run", "GET", "/runs/get?run_id=999", None, 404, "RESOURCE_DOES_NOT_EXIST"),
    ("run id not a number", "GET", "/runs/get?run_id=abc", None, 404, "RESOURCE_DOES_NOT_EXIST"),
    ("no run id", "POST", "/runs/log-batch", {"metrics": []}, 400, "INVALID_PARAMETER_VALUE"),
    ("unknown experiment", "POST", "/runs/create", {"experiment_id": "999"}, 404, "RESOURCE_DOES_NOT_EXIST"),
    ("bad metric value", "POST", "/runs/log-metric", {"run_id": "{run}", "key": "loss", "value": "high", "step": 1},
     400, "INVALID_PARAMETER_VALUE"),
    ("boolean metric value", "POST", "/runs/log-metric", {"run_id": "{run}", "key": "loss", "value": True},
     400, "INVALID_PARAMETER_VALUE"),
    ("negative step", "POST", "/runs/log-metric", {"run_id": "{run}", "key": "loss", "value": 1.0, "step": -1},
     400, "INVALID_PARAMETER_VALUE"),
    ("step past the last epoch", "POST", "/runs/log-metric",
     {"run_id": "{run}", "key": "loss", "value": 1.0, "step": 100_001}, 400, "INVALID_PARAMETER_VALUE"),
    ("metric key too long", "POST", "/runs/log-metric", {"run_id": "{run}", "key": "k" * (KEY_CHARS + 1), "value": 1.0},
     400, "INVALID_PARAMETER_VALUE"),
    ("metric key with a newline", "POST", "/runs/log-metric", {"run_id": "{run}", "key": "a\nb", "value": 1.0},
     400, "INVALID_PARAMETER_VALUE"),
    ("oversized batch: metrics", "POST", "/runs/log-batch",
     {"run_id": "{run}", "metrics": [{"key": "m", "value": 1.0, "step": i} for i in range(1001)]},
     400, "INVALID_PARAMETER_VALUE"),
    ("oversized batch: params", "POST", "/runs/log-batch",
     {"run_id": "{run}", "params": [{"key": f"p{i}", "value": "1"} for i in range(101)]},
     400, "INVALID_PARAMETER_VALUE"),
    ("oversized batch: tags", "POST", "/runs/log-batch",
     {"run_id": "{run}", "tags": [{"key": f"t{i}", "value": "1"} for i in range(101)]},
     400, "INVALID_PARAMETER_VALUE"),
    ("param value too long", "POST", "/runs/log-parameter", {"run_id": "{run}", "key": "p", "value": "v" * 6001},
     400, "INVALID_PARAMETER_VALUE"),
    ("NUL in a param value", "POST", "/runs/log-parameter", {"run_id": "{run}", "key": "p", "value": "a\x00b"},
     400, "INVALID_PARAMETER_VALUE"),
    ("a param twice, two values", "POST", "/runs/log-batch",
     {"run_id": "{run}", "params": [{"key": "p", "value": "1"}, {"key": "p", "value": "2"}]},
     400, "INVALID_PARAMETER_VALUE"),
    ("reserved tag", "POST", "/runs/set-tag", {"run_id": "{run}", "key": "sweeplab.seed_param", "value": "1"},
     400, "INVALID_PARAMETER_VALUE"),
    ("missing key", "POST", "/runs/set-tag", {"run_id": "{run}", "value": "1"}, 400, "INVALID_PARAMETER_VALUE"),
    ("blank experiment name", "POST", "/experiments/create", {"name": "  "}, 400, "INVALID_PARAMETER_VALUE"),
    ("max_results too large", "POST", "/runs/search", {"experiment_ids": [], "max_results": 50_001},
     400, "INVALID_PARAMETER_VALUE"),
    ("a page token not ours", "POST", "/runs/search", {"experiment_ids": [], "page_token": "zz"},
     400, "INVALID_PARAMETER_VALUE"),
    ("unknown endpoint", "POST", "/registered-models/create", {"name": "m"}, 404, "ENDPOINT_NOT_FOUND"),
]


def test_bad_requests_get_mlflows_error_shape(api: TestClient) -> None:
    """Each of BAD (one database for all: a fresh one per case costs seconds on PostgreSQL)."""
    eid = experiment(api)
    for what, method, path, body, status, code in BAD:
        run_id = new_run(api, eid)
        if body is not None:
            body = {k: (v.replace("{run}", run_id) if isinstance(v, str) else v) for k, v in body.items()}
        answer = api.request(method, API + path, json=body)
        assert (answer.status_code, answer.json().get("error_code")) == (status, code), (what, answer.text[:300])
        refused(answer, status, code)
        assert metric_rows_of(api, run_id) == {}, what  # nothing half-stored
        assert {p["key"] for p in run_of(api, run_id)["data"]["params"]} == set(), what


def metric_rows_of(api: TestClient, run_id: str) -> dict[str, Any]:
    series: dict[str, Any] = api.get(f"/api/runs/{run_id}/metrics").json()["series"]
    return series


def test_refusals_before_routing_and_of_the_body_are_mlflow_shaped_too(api: TestClient) -> None:
    run_id = new_run(api, experiment(api))
    refused(api.post(f"{API}/runs/log-batch", content=b"{not json", headers={"content-type": "application/json"}),
            400, "INVALID_PARAMETER_VALUE")
    refused(api.post(f"{API}/runs/log-batch", content=b"run_id=1", headers={"content-type": "text/plain"}),
            415, "BAD_REQUEST")
    refused(api.post(f"{API}/runs/log-batch", content=b"[" + b"1," * 600_000 + b"1]",
                     headers={"content-type": "application/json"}), 413, "INVALID_PARAMETER_VALUE")
    refused(api.post(f"{API}/runs/log-batch", json={"run_id": run_id}, headers={"origin": "https://evil.example"}),
            403, "PERMISSION_DENIED")
    refused(api.post("/ajax-api/2.0/mlflow/runs/log-batch", json={"run_id": "999"}), 404, "RESOURCE_DOES_NOT_EXIST")
    lone_surrogate = b'{"run_id": "' + run_id.encode() + b'", "params": [{"key": "p", "value": "\\ud800"}]}'
    refused(api.post(f"{API}/runs/log-batch", content=lone_surrogate, headers={"content-type": "application/json"}),
            400, "INVALID_PARAMETER_VALUE")
    # Routes of sweeplab's own keep their envelope.
    answer = api.get("/api/runs/999")
    assert answer.status_code == 404 and set(answer.json()) == {"error"}


def test_changes_take_the_api_token_reads_do_not(database_url: str, data_dir: Any, tmp_path: Any) -> None:
    settings = make_settings(database_url, data_dir, tmp_path / "artifacts", api_token=SecretStr("s3cret"))
    from app.migrate import migrate

    migrate(database_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        refused(api.post(f"{API}/experiments/create", json={"name": "x"}), 401, "UNAUTHENTICATED")
        refused(api.post(f"{API}/experiments/create", json={"name": "x"}, headers={"authorization": "Bearer nope"}),
                401, "UNAUTHENTICATED")
        auth = {"authorization": "Bearer s3cret"}
        eid = ok(api.post(f"{API}/experiments/create", json={"name": "x"}, headers=auth))["experiment_id"]
        run_id = ok(api.post(f"{API}/runs/create", json={"experiment_id": eid}, headers=auth))["run"]["info"]["run_id"]
        refused(api.put(f"/api/2.0/mlflow-artifacts/artifacts/{eid}/{run_id}/artifacts/a", content=b"a"),
                401, "UNAUTHENTICATED")
        assert ok(api.get(f"{API}/runs/get", params={"run_id": run_id}))["run"]["info"]["status"] == "RUNNING"
        ok(api.post(f"{API}/runs/search", json={"experiment_ids": [eid]}))  # a search is a read


def test_a_database_away_is_temporarily_unavailable(database_url: str, data_dir: Any, tmp_path: Any,
                                                     engine: Engine) -> None:
    impatient = make_settings(database_url, data_dir, tmp_path / "artifacts", sqlite_busy_timeout_seconds=0.2,
                              pool_timeout_seconds=0.5)
    with TestClient(create_app(impatient), raise_server_exceptions=False) as api:
        run_id = new_run(api, experiment(api))
        with database_away(impatient.database_url):
            answer = api.post(f"{API}/runs/log-metric", json={"run_id": run_id, "key": "a", "value": 1.0, "step": 1})
        refused(answer, 503, "TEMPORARILY_UNAVAILABLE")


def test_replicates_logging_params_at_once_share_one_config(settings: Settings, engine: Engine) -> None:
    """Runs moving at the same moment (external runs' lock) end in one config, none left empty."""
    eid = mlflow_experiments.create_experiment(engine, "race", {})
    ids = [mlflow_runs.create_run(engine, eid, None, None, {}, 100)["info"]["run_id"] for _ in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ids))

    def move(seed: int, run_id: str) -> None:
        try:
            barrier.wait()
            mlflow_runs.log_batch(engine, run_id, [], {"width": "8", "seed": str(seed)}, {}, 100)
            mlflow_runs.log_batch(engine, run_id, [], {"lr": "0.1"}, {}, 100)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(i, r)) for i, r in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    configs, used = configs_with_runs(engine, int(eid))
    assert len(configs) == 1 and set(configs) == used
    assert sorted(r.seed for r in runs_of(engine, int(eid))) == list(range(6))


def test_an_uploaded_page_is_served_inert_from_both_routes(api: TestClient) -> None:
    """A client may upload HTML or SVG with any content type: it must never run script in this origin."""
    eid = experiment(api, "inert")
    run_id = new_run(api, eid)
    root = f"/api/2.0/mlflow-artifacts/artifacts/{eid}/{run_id}/artifacts"
    page = b"<html><script>fetch('/api/sweeps/1/cancel', {method: 'POST'})</script></html>"
    ok(api.put(f"{root}/logs/x.html", content=page, headers={"content-type": "text/html"}))
    ok(api.put(f"{root}/y.svg", content=b"<svg onload=alert(1)/>", headers={"content-type": "image/svg+xml"}))
    ours = f"/api/runs/{run_id}/artifacts"
    for path in (f"{root}/logs/x.html", f"{ours}/logs/x.html", f"{ours}/y.svg"):
        got = api.get(path)
        assert got.status_code == 200, path
        assert got.headers["content-type"].startswith("text/plain"), path
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-security-policy"].startswith("sandbox")
    assert api.get(f"/api/runs/{run_id}/artifacts/logs/x.html").content == page  # a nested name reads back
