"""Sweep metrics downloads: CSV and JSON Lines round-trip to the numbers the API answers."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from app.config import Settings
from app.db import make_engine, write_session
from app.main import create_app
from app.models import Metric
from app.services import exports as export_service
from app.services.exports import COLUMNS
from app.services.external import ExternalRunRequest, create_external_run, record_external_epoch
from tests.factories import make_sweep

EPOCHS = 700  # with 3 keys and 2 runs: more rows than one streamed chunk holds


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def fill_sweep(engine: Engine) -> int:
    """Two runs of two configs: awkward floats, a NaN (stored as NULL), many epochs."""
    run_ids = []
    for seed, config in ((0, {"hidden": [32], "note": 'comma, "quote"'}), (1, {"hidden": [64]})):
        run, _ = create_external_run(engine, ExternalRunRequest(sweep="export", config=config, seed=seed), 100)
        run_ids.append(run.id)
    with write_session(engine) as s:
        s.execute(insert(Metric), [
            {"run_id": run_id, "key": key, "epoch": epoch, "value": (epoch + 1) / 3 + i * 1e-17 + j,
             "created_at": 0.0}
            for i, run_id in enumerate(run_ids) for j, key in enumerate(("loss", "accuracy"))
            for epoch in range(EPOCHS)
        ])
    record_external_epoch(engine, run_ids[0], EPOCHS, {"loss": float("nan"), "val_loss": 0.1})
    return run.sweep_id


def api_values(api: TestClient, sweep_id: int) -> dict[tuple[int, str, int], float | None]:
    out = {}
    for run in api.get(f"/api/sweeps/{sweep_id}/runs").json():
        for key, series in api.get(f"/api/runs/{run['id']}/metrics").json()["series"].items():
            for epoch, value in zip(series["epochs"], series["values"], strict=True):
                out[(run["id"], key, epoch)] = value
    return out


def test_csv_round_trips_to_the_numbers_of_the_api(api: TestClient, engine: Engine) -> None:
    sweep_id = fill_sweep(engine)
    response = api.get(f"/api/sweeps/{sweep_id}/metrics.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="sweep-{sweep_id}-metrics.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == COLUMNS
    got = {(int(r["run"]), r["key"], int(r["epoch"])): (float(r["value"]) if r["value"] else None) for r in rows}
    assert len(rows) == len(got) == 2 * 2 * EPOCHS + 2
    assert got == api_values(api, sweep_id)  # exact floats, NaN as empty
    labels = {r["config_label"] for r in rows}
    assert labels == {'hidden=[32] · note="comma, \\"quote\\""', "hidden=[64]"}
    assert {r["sweep"] for r in rows} == {str(sweep_id)}


def test_jsonl_has_the_same_rows(api: TestClient, engine: Engine) -> None:
    sweep_id = fill_sweep(engine)
    response = api.get(f"/api/sweeps/{sweep_id}/metrics.jsonl")
    assert response.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert all(tuple(r) == COLUMNS for r in rows)
    got = {(r["run"], r["key"], r["epoch"]): r["value"] for r in rows}
    assert got == api_values(api, sweep_id)
    nan_row = next(r for r in rows if r["key"] == "loss" and r["epoch"] == EPOCHS)
    assert nan_row["value"] is None and isinstance(nan_row["seed"], int)


def test_keys_filter_and_empty_and_missing_sweeps(api: TestClient, engine: Engine) -> None:
    sweep_id = fill_sweep(engine)
    only = api.get(f"/api/sweeps/{sweep_id}/metrics.jsonl", params={"keys": ["val_loss"]}).text.splitlines()
    assert [json.loads(line)["value"] for line in only] == [0.1]
    empty = make_sweep(engine)
    assert api.get(f"/api/sweeps/{empty.id}/metrics.csv").text == ",".join(COLUMNS) + "\r\n"
    assert api.get(f"/api/sweeps/{empty.id}/metrics.jsonl").text == ""
    missing = api.get("/api/sweeps/999999/metrics.csv")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_values_are_written_exactly(api: TestClient, engine: Engine) -> None:
    run, _ = create_external_run(engine, ExternalRunRequest(sweep="exact", config={}, seed=7), 100)
    values: dict[str, Any] = {"a": 0.1 + 0.2, "b": 1e-300, "c": -123456.789012345678, "d": 2.0**53 + 1}
    record_external_epoch(engine, run.id, 1, values)
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/sweeps/{run.sweep_id}/metrics.csv").text)))
    assert {r["key"]: float(r["value"]) for r in rows} == {k: float(v) for k, v in values.items()}
    assert all(math.isfinite(float(r["value"])) for r in rows)


def test_every_page_boundary_keeps_the_rows_and_releases_the_connection(
        api: TestClient, engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyset pages of 7 rows: the export is the same, and between chunks no connection is
    checked out (a slow client holds no pooled connection and no open transaction)."""
    sweep_id = fill_sweep(engine)
    whole = api.get(f"/api/sweeps/{sweep_id}/metrics.csv").text
    monkeypatch.setattr(export_service, "ROWS_PER_PAGE", 7)
    monkeypatch.setattr(export_service, "ROWS_PER_CHUNK", 5)
    own = make_engine(settings.database_url)  # a pool of its own: the app's reaper uses the shared one
    chunks = []
    for chunk in export_service.metrics_csv(own, sweep_id):
        assert own.pool.checkedout() == 0, "a connection is held while the client reads"  # type: ignore[attr-defined]
        chunks.append(chunk)
    own.dispose()
    assert len(chunks) > 500
    assert "".join(chunks) == whole
    assert api.get(f"/api/sweeps/{sweep_id}/metrics.csv").text == whole
    rows = [json.loads(line) for line in api.get(f"/api/sweeps/{sweep_id}/metrics.jsonl").text.splitlines()]
    assert [(r["run"], r["key"], r["epoch"]) for r in rows] == sorted((r["run"], r["key"], r["epoch"]) for r in rows)
    assert len(rows) == 2 * 2 * EPOCHS + 2


FORMULAS = ["=1+2", "+SUM(A1:A2)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "=HYPERLINK(\"http://x\")"]


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(api: TestClient, engine: Engine) -> None:
    """OWASP's CSV-injection rule: a text cell starting with = + - @, tab or CR gets a leading
    single quote; numbers stay numbers (a negative value is a number, not a formula)."""
    run, _ = create_external_run(engine, ExternalRunRequest(sweep="formulas", config={"=cmd|' /C calc'!A0": 1},
                                                            seed=0), 100)
    with write_session(engine) as s:
        s.execute(insert(Metric), [{"run_id": run.id, "key": key, "epoch": 1, "value": -0.5, "created_at": 0.0}
                                   for key in [*FORMULAS, "plain", "a=b"]])
    text = api.get(f"/api/sweeps/{run.sweep_id}/metrics.csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["key"] for r in rows) == sorted(["'" + f for f in FORMULAS] + ["plain", "a=b"])
    assert {r["config_label"] for r in rows} == {"'=cmd|' /C calc'!A0=1"}
    assert {r["value"] for r in rows} == {"-0.5"} and {r["seed"] for r in rows} == {"0"}
    # JSON Lines is data, not a spreadsheet: its strings are the stored ones.
    lines = [json.loads(line) for line in api.get(f"/api/sweeps/{run.sweep_id}/metrics.jsonl").text.splitlines()]
    assert sorted(r["key"] for r in lines) == sorted([*FORMULAS, "plain", "a=b"])
    assert {r["value"] for r in lines} == {-0.5}
