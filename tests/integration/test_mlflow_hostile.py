"""MLflow's write routes against hostile and broken input (the protocol's ordinary use:
tests/integration/test_mlflow_api.py): ids and page tokens that are not ids, text neither
database stores, numbers past what a field holds, bodies nested to the parser's limit, a run's
limits reached at create or by its params, a client gone mid-upload, a database fault mid-batch
and an answer lost after a commit, two clients writing one run (or making one experiment) at once,
stepless points whatever the clients' clocks, an update refused whole, a name with spaces around.
Every refusal is MLflow's error shape, never a 500."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.db import write_session
from app.main import create_app
from app.models import Run
from app.services.mlflow_run_values import MAX_TAGS_CHARS
from tests.factories import metric_rows, runs_of
from tests.faults import LostCommit, StatementFault
from tests.integration.test_mlflow_api import (
    API,
    configs_with_runs,
    experiment,
    log,
    new_run,
    ok,
    params,
    refused,
    run_of,
)

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def not_found(api: TestClient, method: str, path: str, **kwargs: Any) -> None:
    refused(api.request(method, path, **kwargs), 404, "RESOURCE_DOES_NOT_EXIST")


def test_run_and_experiment_ids_of_other_digits_or_past_the_column_are_not_found(api: TestClient,
                                                                                 engine: Engine) -> None:
    """'²' passes str.isdigit() but not int(); '٣' (Arabic-Indic three) is int 3; 2**31 passes
    no PostgreSQL integer column: each names no run or experiment, on either database."""
    eid = experiment(api)
    runs = [new_run(api, eid) for _ in range(3)]
    assert "3" in runs  # so that '٣' would reach a run if read as 3
    for rid in ("²", "٣", "2147483648", "9" * 18):
        not_found(api, "GET", f"{API}/runs/get", params={"run_id": rid})
        not_found(api, "GET", f"{API}/metrics/get-history", params={"run_id": rid, "metric_key": "a"})
        not_found(api, "POST", f"{API}/runs/log-metric", json={"run_id": rid, "key": "a", "value": 1.0, "step": 1})
        not_found(api, "POST", f"{API}/runs/log-batch", json={"run_id": rid, "params": params(a=1)})
        not_found(api, "POST", f"{API}/runs/log-parameter", json={"run_id": rid, "key": "a", "value": "1"})
        not_found(api, "POST", f"{API}/runs/set-tag", json={"run_id": rid, "key": "a", "value": "1"})
        not_found(api, "POST", f"{API}/runs/delete-tag", json={"run_id": rid, "key": "a"})
        not_found(api, "POST", f"{API}/runs/update", json={"run_id": rid, "status": "FINISHED"})
        not_found(api, "POST", f"{API}/runs/update", json={"run_id": rid, "run_name": "x"})
        not_found(api, "POST", f"{API}/runs/log-inputs", json={"run_id": rid})
        not_found(api, "PUT", f"{ARTIFACTS}/{eid}/{rid}/artifacts/x", content=b"x")
        not_found(api, "GET", f"{ARTIFACTS}/{eid}/{rid}/artifacts/x")
    for bad in ("²", "٣", "2147483648"):
        not_found(api, "POST", f"{API}/runs/create", json={"experiment_id": bad})
        not_found(api, "GET", f"{API}/experiments/get", params={"experiment_id": bad})
        not_found(api, "POST", f"{API}/runs/search", json={"experiment_ids": [bad]})
        not_found(api, "GET", f"{API}/runs/search", params={"experiment_ids": [bad]})
        not_found(api, "PUT", f"{ARTIFACTS}/{bad}/{runs[0]}/artifacts/x", content=b"x")
    assert metric_rows(engine, 3) == [] and run_of(api, "3")["data"]["params"] == []
    assert {t["key"] for t in run_of(api, "3")["data"]["tags"]} == set()
    assert run_of(api, "3")["info"]["status"] == "RUNNING"


def test_datasets_nested_to_the_parsers_limit_are_dropped_as_any(api: TestClient) -> None:
    """runs/log-inputs drops its datasets: however deep they nest, they are not walked."""
    run_id = new_run(api, experiment(api))
    deep = "[" * 900 + "]" * 900
    body = f'{{"run_id": "{run_id}", "datasets": [{deep}]}}'.encode()
    ok(api.post(f"{API}/runs/log-inputs", content=body, headers={"content-type": "application/json"}))
    dataset = {"dataset": {"name": "d", "digest": "x", "source_type": "code", "source": "{}"}, "tags": []}
    ok(api.post(f"{API}/runs/log-inputs", json={"run_id": run_id, "datasets": [dataset]}))


def test_a_runs_tags_are_bounded_when_it_is_created_too(api: TestClient, engine: Engine) -> None:
    """The run's tags limit holds at runs/create as at set-tag: a run created past it would refuse
    every later tag (a rename included)."""
    eid = experiment(api)
    value = "v" * 7000
    tags = [{"key": f"t{i}", "value": value} for i in range(100)]
    assert len(tags) * len(value) > MAX_TAGS_CHARS
    message = refused(api.post(f"{API}/runs/create", json={"experiment_id": eid, "tags": tags}),
                      400, "INVALID_PARAMETER_VALUE")
    assert "tags" in message
    assert runs_of(engine, int(eid)) == []
    run_id = new_run(api, eid, tags=tags[:20])  # within the limit
    ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "run_name": "renamed"}))
    assert run_of(api, run_id)["info"]["run_name"] == "renamed"


def test_searches_sent_as_get_refuse_unstorable_text_as_posts_do(api: TestClient) -> None:
    eid = experiment(api)
    for path, query in [("runs/search", {"experiment_ids": [eid], "filter": "params.a = 'a\x00'"}),
                        ("runs/search", {"experiment_ids": [eid], "order_by": "params.a\x00"}),
                        ("experiments/search", {"filter": "name = 'a\x00'"}),
                        ("experiments/search", {"order_by": "name\x00"})]:
        assert "NUL" in refused(api.get(f"{API}/{path}", params=query), 400, "INVALID_PARAMETER_VALUE"), path


def test_a_name_or_metric_key_with_a_nul_names_nothing_on_both_databases(api: TestClient) -> None:
    """No experiment or metric can hold a NUL (they are refused when made), so looking one up
    finds nothing, as on SQLite; PostgreSQL refused the text and the answer was a 400 about
    'a number out of range'."""
    run_id = new_run(api, experiment(api))
    assert "not found" in refused(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": "a\x00b"}),
                                  404, "RESOURCE_DOES_NOT_EXIST")
    got = ok(api.get(f"{API}/metrics/get-history", params={"run_id": run_id, "metric_key": "a\x00b"}))
    assert got["metrics"] == []


def test_a_metric_value_past_a_float_is_refused_naming_it(api: TestClient, engine: Engine) -> None:
    run_id = new_run(api, experiment(api))
    huge = 10**400  # a JSON integer Python reads whole; no float holds it
    message = refused(api.post(f"{API}/runs/log-metric", json={"run_id": run_id, "key": "loss", "value": huge,
                                                                "step": 1}), 400, "INVALID_PARAMETER_VALUE")
    assert "metrics.loss" in message
    message = refused(log(api, run_id, metrics=[{"key": "acc", "value": 0.5, "step": 1},
                                                {"key": "loss", "value": -huge, "step": 1}]),
                      400, "INVALID_PARAMETER_VALUE")
    assert "metrics.loss" in message
    assert metric_rows(engine, int(run_id)) == []
    # A float literal past the range is JSON's infinity, stored as such (as MLflow's own server does).
    body = f'{{"run_id": "{run_id}", "key": "loss", "value": 1e400, "step": 2}}'.encode()
    ok(api.post(f"{API}/runs/log-metric", content=body, headers={"content-type": "application/json"}))
    assert metric_rows(engine, int(run_id)) == [("loss", 2, float("inf"))]


def test_an_upload_cut_short_stores_nothing_and_is_no_server_error(api: TestClient, engine: Engine,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A client that drops the connection mid-upload: nothing stored, nothing logged as a server
    fault (a stack trace a dropped upload), and the retried upload stores the file once."""
    eid = experiment(api)
    run_id = new_run(api, eid)
    path = f"{ARTIFACTS}/{eid}/{run_id}/artifacts/model_summary.txt"
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": b"half a", "more_body": True},
                                      {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def cut_short() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver"), (b"content-length", b"1000"),
                             (b"content-type", b"text/plain")],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        await api.app(scope, receive, send)

    with caplog.at_level(logging.ERROR):
        api.portal.call(cut_short)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] < 500
    assert api.get(f"/api/runs/{run_id}/artifacts").json() == []
    ok(api.put(path, content=b"a summary", headers={"content-type": "text/plain"}))
    assert [a["name"] for a in api.get(f"/api/runs/{run_id}/artifacts").json()] == ["model_summary.txt"]


def test_a_fault_mid_batch_stores_none_of_it_and_the_retry_all_once(api: TestClient, engine: Engine) -> None:
    """The database fails at the batch's metric insert (after its params moved the run and its
    tags were set): 503, and none of the batch is kept; the client's retry stores it whole."""
    eid = experiment(api)
    run_id = new_run(api, eid)
    batch = {"params": params(lr="0.1", seed=4), "tags": [{"key": "note", "value": "x"}],
             "metrics": [{"key": "loss", "value": 0.5, "timestamp": 100, "step": 0},
                         {"key": "loss", "value": 0.4, "timestamp": 101, "step": 0},
                         {"key": "acc", "value": 0.9, "step": 3}]}
    fault = StatementFault(engine, lambda sql, _: sql.lstrip().upper().startswith("INSERT INTO METRICS"))
    try:
        refused(log(api, run_id, **batch), 503, "TEMPORARILY_UNAVAILABLE")
    finally:
        fault.remove()
    assert fault.fired == 1
    run = run_of(api, run_id)
    assert (run["data"]["params"], run["data"]["metrics"]) == ([], [])
    assert "note" not in {t["key"] for t in run["data"]["tags"]}
    assert api.get(f"/api/runs/{run_id}").json()["seed"] == 0
    ok(log(api, run_id, **batch))
    ok(log(api, run_id, **batch))  # and a second retry stores nothing more
    assert metric_rows(engine, int(run_id)) == [("acc", 3, 0.9), ("loss", 0, 0.5), ("loss", 1, 0.4)]
    assert {p["key"]: p["value"] for p in run_of(api, run_id)["data"]["params"]} == {"lr": "0.1", "seed": "4"}


def test_a_batch_whose_answer_was_lost_after_its_commit_is_not_stored_twice(api: TestClient,
                                                                            engine: Engine) -> None:
    """The commit happened but the answer was lost (503): MLflow's client retries the same body,
    stepless points included, and nothing is stored twice."""
    run_id = new_run(api, experiment(api))
    batch = {"params": params(width=8), "tags": [{"key": "note", "value": "x"}],
             "metrics": [{"key": "loss", "value": v, "timestamp": 200 + i, "step": 0}
                         for i, v in enumerate([0.5, 0.4, 0.3])]}
    lost = LostCommit(engine, lambda sql, _: sql.lstrip().upper().startswith("INSERT INTO METRICS"))
    try:
        refused(log(api, run_id, **batch), 503, "TEMPORARILY_UNAVAILABLE")
    finally:
        lost.remove()
    assert lost.fired == 1
    ok(log(api, run_id, **batch))
    assert metric_rows(engine, int(run_id)) == [("loss", 0, 0.5), ("loss", 1, 0.4), ("loss", 2, 0.3)]
    ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": "FINISHED"}))
    ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": "FINISHED"}))  # its retry, after a loss


def test_two_clients_writing_one_run_at_once_lose_and_double_nothing(settings: Settings, engine: Engine,
                                                                    api: TestClient) -> None:
    """Two clients log steps of their own keys, a param each and a shared one into one run at once."""
    run_id = new_run(api, experiment(api))
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def client(key: str) -> None:
        with TestClient(create_app(settings), raise_server_exceptions=False) as own:
            barrier.wait()
            for step in range(1, 16):
                answer = own.post(f"{API}/runs/log-batch", json={
                    "run_id": run_id, "params": params(width=8, **{f"p_{key}": key}),
                    "tags": [{"key": key, "value": str(step)}],
                    "metrics": [{"key": key, "value": step / 100, "step": step},
                                {"key": "shared", "value": 1.0, "step": step}]})
                if answer.status_code != 200:
                    errors.append(answer.text[:200])

    threads = [threading.Thread(target=client, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = metric_rows(engine, int(run_id))
    for key in ("a", "b", "shared"):
        assert [e for k, e, _ in rows if k == key] == list(range(1, 16)), key
    run = run_of(api, run_id)
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}.items() >= {"a": "15", "b": "15"}.items()
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"width": "8", "p_a": "a", "p_b": "b"}
    configs, used = configs_with_runs(engine, int(run["info"]["experiment_id"]))
    assert len(configs) == 1 and set(configs) == used  # the configs it passed through are gone


def test_stepless_points_are_kept_unless_retried_whatever_their_clocks(api: TestClient, engine: Engine) -> None:
    """A point without a step (the client's step 0) is a retry only when the key had that very
    point (its timestamp and value) before: points of a client whose clock is behind another's,
    two points in one millisecond, points after a bogus timestamp are all kept."""
    rid = new_run(api, experiment(api))

    def point(key: str, value: float, timestamp: int) -> dict[str, Any]:
        return {"run_id": rid, "key": key, "value": value, "timestamp": timestamp, "step": 0}

    sent = [point("loss", i + skew / 10, 1000 + 10 * i + skew) for i in range(3) for skew in (5, 0)]  # B behind A
    sent += [point("same_ms", v, 5000) for v in (1.0, 2.0)]
    sent += [point("bogus", 1.0, 10**30)] + [point("bogus", 2.0 + i, 1000 + i) for i in range(3)]
    for body in sent:
        ok(api.post(f"{API}/runs/log-metric", json=body))
    expected = ([("bogus", e, v) for e, v in enumerate([1.0, 2.0, 3.0, 4.0])]
                + [("loss", e, v) for e, v in enumerate([0.5, 0.0, 1.5, 1.0, 2.5, 2.0])]
                + [("same_ms", 0, 1.0), ("same_ms", 1, 2.0)])
    assert metric_rows(engine, int(rid)) == expected
    for body in sent:  # every request retried, in any order: nothing more
        ok(api.post(f"{API}/runs/log-metric", json=body))
    ok(log(api, rid, metrics=[{k: v for k, v in b.items() if k != "run_id"} for b in reversed(sent)]))
    assert metric_rows(engine, int(rid)) == expected
    assert "sweeplab.stepless" not in {t["key"] for t in run_of(api, rid)["data"]["tags"]}


def test_a_stepless_memory_of_the_former_shape_still_tells_retries(api: TestClient, engine: Engine) -> None:
    """Runs logged before the memory kept points kept only each key's latest timestamp: a point
    no later than it is a retry, as it was, and a key not logged keeps that memory."""
    rid = new_run(api, experiment(api))

    def point(key: str, value: float, timestamp: int) -> None:
        ok(api.post(f"{API}/runs/log-metric", json={"run_id": rid, "key": key, "value": value,
                                                     "timestamp": timestamp, "step": 0}))

    point("loss", 0.5, 500)
    point("acc", 0.5, 500)
    with write_session(engine) as s:
        run = s.get(Run, int(rid))
        assert run is not None
        run.tags = {**(run.tags or {}), "sweeplab.stepless": {"loss": 500, "acc": 500}}
    for value, timestamp in [(0.5, 500), (0.4, 400), (0.3, 600), (0.3, 600)]:
        point("loss", value, timestamp)
    point("acc", 0.4, 400)  # a retry still: loss's points left acc's memory as it was
    assert metric_rows(engine, int(rid)) == [("acc", 0, 0.5), ("loss", 0, 0.5), ("loss", 1, 0.3)]


def test_a_retried_batch_longer_than_the_memory_stores_nothing(api: TestClient, engine: Engine) -> None:
    """MLflow's asynchronous logging sends a key's stepless points in batches of hundreds; a batch
    retried, even one longer than the key's memory, stores nothing more."""
    rid = new_run(api, experiment(api))
    first = [{"key": "loss", "value": i / 1000, "timestamp": 10_000 + i, "step": 0} for i in range(300)]
    second = [{"key": "loss", "value": i / 1000, "timestamp": 20_000 + i, "step": 0} for i in range(300, 600)]
    ok(log(api, rid, metrics=first))
    ok(log(api, rid, metrics=first))
    ok(log(api, rid, metrics=second))
    ok(log(api, rid, metrics=second))
    ok(log(api, rid, metrics=first))
    rows = metric_rows(engine, int(rid))
    assert [(e, v) for _, e, v in rows] == [(i, i / 1000) for i in range(600)]


def test_params_past_the_configs_size_are_refused_naming_params(api: TestClient) -> None:
    """A run's params are its config, which holds at most external.MAX_CONFIG_CHARS: params
    MLflow allows one by one (6000 characters each) may pass it together; the refusal says so."""
    run_id = new_run(api, experiment(api))
    ok(log(api, run_id, params=params(first="x" * 6000)))
    message = refused(api.post(f"{API}/runs/log-parameter", json={"run_id": run_id, "key": "second",
                                                                   "value": "y" * 6000}),
                      400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("params") and "second" in message
    assert {p["key"] for p in run_of(api, run_id)["data"]["params"]} == {"first"}


def test_clients_creating_one_experiment_or_the_default_at_once_make_one(settings: Settings, engine: Engine,
                                                                         api: TestClient) -> None:
    """set_experiment in several processes at once: one experiment, the others told it exists;
    first runs into the default experiment at once: one 'Default' sweep, every run in it."""
    answers: list[tuple[int, str]] = []
    barrier = threading.Barrier(4)

    def client() -> None:
        with TestClient(create_app(settings), raise_server_exceptions=False) as own:
            barrier.wait()
            made = own.post(f"{API}/experiments/create", json={"name": "shared"})
            answers.append((made.status_code, made.json().get("error_code", "")))
            barrier.wait()
            run = own.post(f"{API}/runs/create", json={"experiment_id": "0"})
            answers.append((run.status_code, run.json()["run"]["info"]["experiment_id"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = sorted(a for a in answers if a[1] in ("", "RESOURCE_ALREADY_EXISTS"))
    assert created == [(200, "")] + [(400, "RESOURCE_ALREADY_EXISTS")] * 3
    defaults = {eid for status, eid in answers if eid not in ("", "RESOURCE_ALREADY_EXISTS") and status == 200}
    assert len(defaults) == 1 and len(runs_of(engine, int(defaults.pop()))) == 4
    names = [e["name"] for e in ok(api.get(f"{API}/experiments/search"))["experiments"]]
    assert sorted(names) == ["Default", "shared"]


def test_an_experiment_name_with_spaces_around_is_found_as_it_was_made(api: TestClient) -> None:
    """experiments/create keeps the name stripped; get-by-name looks for the name stripped too, so
    mlflow.set_experiment(" padded ") finds it the next time (it was made again and refused, and
    set_experiment's fallback lookup found nothing: its runs went to the default experiment)."""
    eid = ok(api.post(f"{API}/experiments/create", json={"name": " padded "}))["experiment_id"]
    got = ok(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": " padded "}))["experiment"]
    assert (got["experiment_id"], got["name"]) == (eid, "padded")
    refused(api.post(f"{API}/experiments/create", json={"name": " padded "}), 400, "RESOURCE_ALREADY_EXISTS")
    refused(api.get(f"{API}/experiments/get-by-name", params={"experiment_name": "  "}), 404,
            "RESOURCE_DOES_NOT_EXIST")


def test_a_refused_update_renames_nothing(api: TestClient) -> None:
    """runs/update with a name and a status the run cannot take: refused whole (the name was
    stored before the status was refused). MlflowClient.update_run(name=) sends the run's own
    status with the name, which an ended run takes."""
    run_id = new_run(api, experiment(api), run_name="first")
    ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "status": "FINISHED"}))
    refused(api.post(f"{API}/runs/update", json={"run_id": run_id, "run_name": "second", "status": "FAILED"}),
            400, "INVALID_STATE")
    refused(api.post(f"{API}/runs/update", json={"run_id": run_id, "run_name": "second", "status": "RUNNING"}),
            400, "INVALID_STATE")
    assert run_of(api, run_id)["info"]["run_name"] == "first"
    info = ok(api.post(f"{API}/runs/update", json={"run_id": run_id, "run_name": "second", "status": "FINISHED"}))
    assert (info["run_info"]["run_name"], info["run_info"]["status"]) == ("second", "FINISHED")


def test_a_page_token_of_other_digits_is_not_ours(api: TestClient) -> None:
    eid = experiment(api)
    for token in ("²", "٣"):
        refused(api.post(f"{API}/runs/search", json={"experiment_ids": [eid], "page_token": token}),
                400, "INVALID_PARAMETER_VALUE")
        refused(api.get(f"{API}/experiments/search", params={"page_token": token}), 400, "INVALID_PARAMETER_VALUE")
