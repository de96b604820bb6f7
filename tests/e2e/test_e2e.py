"""End to end with real parts: HTTP API -> `sweeplab worker` process training real Keras models on a small
generated dataset -> metrics in the database -> the sweep page in the API and HTML."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_worker, wait_for

SPEC = {"name": "e2e", "dataset": "mnist", "model": {"hidden": [16]}, "grid": {"model.hidden": [[8], [16]]},
        "replicates": 2, "epochs": 3, "optimizer": {"name": "adam"}, "loss": "sparse_categorical_crossentropy"}


def _counts(server: LiveServer, sweep_id: int) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(f"{server.url}/api/sweeps/{sweep_id}").json()["status_counts"]
    return counts


@pytest.mark.slow
def test_sweep_trains_for_real_and_shows_on_its_page(live_server: LiveServer, tmp_path: Path) -> None:
    settings = live_server.settings.model_copy(update={"trainer": "keras"})
    created = httpx.post(f"{live_server.url}/api/sweeps", json=SPEC).json()
    assert created["runs"] == 4
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: _counts(live_server, created["id"])["succeeded"] == 4, 180, 1.0, "4 runs to succeed")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    runs = httpx.get(f"{live_server.url}/api/sweeps/{created['id']}/runs").json()
    for run in runs:
        series = httpx.get(f"{live_server.url}/api/runs/{run['id']}/metrics").json()["series"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert series[key]["epochs"] == [0, 1, 2, 3]
        assert series["val_accuracy"]["values"][-1] > series["val_accuracy"]["values"][0]
        model = httpx.get(f"{live_server.url}/api/runs/{run['id']}/artifacts/model.keras")
        assert model.status_code == 200 and model.content[:2] == b"PK"  # a .keras file is a zip
    best = max(httpx.get(f"{live_server.url}/api/runs/{r['id']}/metrics").json()["series"]["val_accuracy"]["values"][-1]
               for r in runs)
    assert best > 0.5  # the generated classes are easy: training must have learned them
    page = httpx.get(f"{live_server.url}/sweeps/{created['id']}")
    assert page.status_code == 200 and "e2e" in page.text and "/vendor/plotly.min.js" in page.text
    assert httpx.get(f"{live_server.url}/vendor/plotly.min.js").status_code == 200
    log = (tmp_path / "worker.log").read_text()
    assert "epoch 3/3" in log and "Traceback" not in log


@pytest.mark.slow
def test_sigkilled_worker_run_resumes_on_another(live_server: LiveServer, tmp_path: Path) -> None:
    """A real Keras worker killed with SIGKILL mid-run; another finishes it with epochs 0..E once each."""
    settings = live_server.settings.model_copy(update={"trainer": "keras", "lease_seconds": 3.0, "pack_size": 1})
    spec = {**SPEC, "grid": {}, "replicates": 1, "epochs": 8, "limit": {"train": 600}}
    created = httpx.post(f"{live_server.url}/api/sweeps", json=spec).json()
    run_id = httpx.get(f"{live_server.url}/api/sweeps/{created['id']}/runs").json()[0]["id"]

    def epochs() -> list[int]:
        series = httpx.get(f"{live_server.url}/api/runs/{run_id}/metrics").json()["series"]
        return list(series.get("val_accuracy", {}).get("epochs", []))

    first = start_worker(settings, tmp_path / "w1.log")
    wait_for(lambda: len(epochs()) >= 3, 120, 0.1, "epochs 0-2")
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start_worker(settings.model_copy(update={"reap_seconds": 0.5}), tmp_path / "w2.log")
    try:
        wait_for(lambda: _counts(live_server, created["id"])["succeeded"] == 1, 180, 0.5, "the run to succeed")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    run = httpx.get(f"{live_server.url}/api/runs/{run_id}").json()
    assert run["attempt"] == 2
    series = httpx.get(f"{live_server.url}/api/runs/{run_id}/metrics").json()["series"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert series[key]["epochs"] == list(range(9))
    resumed_from = re.search(r"claimed runs \[\d+\] \(config \d+, from epoch (\d+)", (tmp_path / "w2.log").read_text())
    assert resumed_from and int(resumed_from.group(1)) >= 3  # not from scratch: from its checkpoint
