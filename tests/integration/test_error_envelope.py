"""One error envelope for every error under /api, validation errors included:
{"error": {"code", "message", "fields": [{"loc", "msg"}]}} for 400, 404, 409, 413, 415, 422 and
503 (a database really away), never FastAPI's {"detail": [...]}; the OpenAPI document says so;
pages answer a browser with the HTML error page instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from tests.conftest import LiveServer, make_settings
from tests.faults import database_away

SPEC = {"name": "envelope", "epochs": 2, "replicates": 2, "model": {"hidden": [4]}}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def sweep(api: TestClient) -> dict[str, Any]:
    created = api.post("/api/sweeps", json=SPEC)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer's error, after checking the envelope's exact shape: JSON, the one key `error`,
    in it exactly code, message and fields, each field exactly loc and msg, all strings."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "fields"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], list)
    for field in error["fields"]:
        assert set(field) == {"loc", "msg"} and all(isinstance(v, str) for v in field.values()), field
    return error


def test_400_bad_config_ids(api: TestClient) -> None:
    error = envelope(api.get("/api/compare?configs=abc"), 400, "bad_request")
    assert "configs" in error["message"] and error["fields"] == []


def test_404_unknown_sweep_run_and_route(api: TestClient) -> None:
    assert envelope(api.get("/api/sweeps/999999"), 404, "not_found")["message"] == "sweep 999999 not found"
    assert envelope(api.get("/api/runs/999999"), 404, "not_found")["message"] == "run 999999 not found"
    envelope(api.get("/api/sweeps/progress?ids=999999"), 404, "not_found")
    envelope(api.get("/api/no-such-thing"), 404, "not_found")


def test_409_an_epoch_for_a_run_that_ended(api: TestClient) -> None:
    run = api.post("/api/external/runs", json={"sweep": "notebook", "seed": 0}).json()
    assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).status_code == 200
    error = envelope(api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": {}}), 409,
                     "invalid_transition")
    assert "already succeeded" in error["message"] and error["fields"] == []


def test_413_a_body_over_the_limit(api: TestClient) -> None:
    big = {**SPEC, "description": "x" * 1_100_000}
    envelope(api.post("/api/sweeps", json=big), 413, "payload_too_large")


def test_415_a_content_type_the_route_does_not_take(api: TestClient) -> None:
    answer = api.post("/api/sweeps", content=b'{"name": "x"}', headers={"content-type": "text/plain"})
    envelope(answer, 415, "unsupported_media_type")


@pytest.mark.parametrize(("url", "loc"), [
    ("/api/sweeps?limit=0", "query.limit"),
    ("/api/sweeps?status=sleeping", "query.status"),
    ("/api/sweeps/progress", "query.ids"),
    ("/api/sweeps/progress?ids=one", "query.ids.0"),
    ("/api/sweeps/abc", "path.sweep_id"),
])
def test_422_a_bad_parameter_names_it(api: TestClient, url: str, loc: str) -> None:
    error = envelope(api.get(url), 422, "invalid_input")
    assert [f["loc"] for f in error["fields"]] == [loc]
    assert error["message"].startswith(f"{loc}: ")


def test_422_a_bad_body_field_names_it_as_it_stands_in_the_body(api: TestClient) -> None:
    run = api.post("/api/external/runs", json={"sweep": "notebook", "seed": 0}).json()
    error = envelope(api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": "first", "metrics": {}}), 422,
                     "invalid_input")
    assert [f["loc"] for f in error["fields"]] == ["epoch"]
    assert "integer" in error["fields"][0]["msg"]
    several = envelope(api.post("/api/external/runs", json={"sweep": "", "seed": -1, "bogus": 1}), 422,
                       "invalid_input")
    assert sorted(f["loc"] for f in several["fields"]) == ["bogus", "seed", "sweep"]
    assert all(f"{f['loc']}: {f['msg']}" in several["message"] for f in several["fields"])


def test_422_a_bad_spec_is_the_same_envelope(api: TestClient) -> None:
    error = envelope(api.post("/api/sweeps", json={**SPEC, "epochs": 0}), 422, "invalid_spec")
    assert [f["loc"] for f in error["fields"]] == ["epochs"]


NUL_KEYS = "keys=val_accuracy&keys=a%00b"


@pytest.mark.parametrize("path", ["aggregates", "series"])
def test_422_nul_in_chart_keys_names_keys(api: TestClient, sweep: dict[str, Any], path: str) -> None:
    """Not the "number out of range" PostgreSQL's refusal of NUL used to be reported as."""
    error = envelope(api.get(f"/api/sweeps/{sweep['id']}/{path}?{NUL_KEYS}"), 422, "invalid_input")
    assert [f["loc"] for f in error["fields"]] == ["query.keys.1"] and "NUL" in error["fields"][0]["msg"]
    config_id = api.get(f"/api/sweeps/{sweep['id']}/configs").json()[0]["id"]
    for url in (f"/api/configs/aggregates?ids={config_id}&{NUL_KEYS}", f"/api/configs/{config_id}/series?{NUL_KEYS}"):
        assert [f["loc"] for f in envelope(api.get(url), 422, "invalid_input")["fields"]] == ["query.keys.1"]


@pytest.mark.slow
def test_422_nul_in_stream_and_export_keys_before_any_byte_streams(live_server: LiveServer) -> None:
    """Over real HTTP: a 422 envelope, not a 200 whose stream breaks at the first query."""
    sweep = httpx.post(f"{live_server.url}/api/sweeps", json=SPEC, timeout=10).json()
    for path in ("metrics.csv", "metrics.jsonl", "stream"):
        with httpx.stream("GET", f"{live_server.url}/api/sweeps/{sweep['id']}/{path}?{NUL_KEYS}", timeout=10) as r:
            r.read()
            error = envelope(r, 422, "invalid_input")  # type: ignore[arg-type]
        assert [f["loc"] for f in error["fields"]] == ["query.keys.1"], path


@pytest.fixture
def impatient(database_url: str, data_dir: Any, tmp_path: Any) -> Settings:
    """Settings that give up on a busy database quickly (SQLite's busy timeout, the pool's)."""
    return make_settings(database_url, data_dir, tmp_path / "artifacts", sqlite_busy_timeout_seconds=0.2,
                         pool_timeout_seconds=0.5)


def test_503_when_the_database_is_away(impatient: Settings, engine: Engine) -> None:
    """PostgreSQL refusing connections with every open one terminated, or SQLite's write lock held
    by another connection past the busy timeout: a change answers 503 with Retry-After."""
    with TestClient(create_app(impatient), raise_server_exceptions=False) as api:
        sweep_id = api.post("/api/sweeps", json=SPEC).json()["id"]
        with database_away(impatient.database_url):
            answer = api.post(f"/api/sweeps/{sweep_id}/cancel")
            page = api.post(f"/api/sweeps/{sweep_id}/cancel", headers={"accept": BROWSER_ACCEPT})
        error = envelope(answer, 503, "database_unavailable")
        assert error["fields"] == [] and int(answer.headers["retry-after"]) >= 1
        envelope(page, 503, "database_unavailable")  # /api answers JSON whatever the Accept
        assert api.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 200


def test_pages_answer_a_browser_with_the_html_error_page(api: TestClient) -> None:
    missing = api.get("/sweeps/999999", headers={"accept": BROWSER_ACCEPT})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "Not found" in missing.text and "sweep 999999 not found" in missing.text
    assert '"error"' not in missing.text
    bad = api.get("/sweeps/abc", headers={"accept": BROWSER_ACCEPT})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")
    assert "Invalid input" in bad.text and "path.sweep_id" in bad.text
    # A client that does not ask for HTML (curl, a script) gets the envelope on pages too.
    envelope(api.get("/sweeps/999999"), 404, "not_found")


def test_openapi_documents_the_envelope_for_every_error(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    fields = spec["components"]["schemas"]["ErrorEnvelope"]["properties"]["error"]
    assert fields["required"] == ["code", "message", "fields"]
    seen = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api"):
            continue
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status[0] in "45" and path != "/api/health":  # health reports its 503 in its own body
                    assert answer["content"]["application/json"]["schema"] == ref, (method, path, status)
                    seen += status == "422"
    assert seen >= 10


def test_503_when_sqlite_finds_its_disk_full(settings: Settings, engine: Engine) -> None:
    """SQLite's "database or disk is full" (here: the file may not grow, PRAGMA max_page_count) is
    the database unable to take writes now, not a bug: 503 with Retry-After, no stack trace, and
    nothing half-written; once there is room again the same request succeeds."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's own disk-full error")
    from sqlalchemy import event, text

    full = {"on": True}

    def cap(dbapi_connection: Any, _record: Any) -> None:
        if full["on"]:
            pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        event.listen(engine, "connect", cap)
        try:
            engine.dispose()  # every connection from here on is capped
            big = {**SPEC, "name": "x" * 150, "grid": {"model.hidden": [[w] for w in range(1, 201)]}, "replicates": 10}
            answer = api.post("/api/sweeps", json=big)
            error = envelope(answer, 503, "database_unavailable")
            assert int(answer.headers["retry-after"]) >= 1 and "Traceback" not in answer.text
            with engine.connect() as c:
                assert c.execute(text("SELECT count(*) FROM sweeps")).scalar() == 0
            assert error["fields"] == []
        finally:
            full["on"] = False
            event.remove(engine, "connect", cap)
            engine.dispose()
        assert api.post("/api/sweeps", json=big).status_code == 201
