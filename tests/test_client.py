"""sweeplab.Client against a live server: submit, wait with progress, cancel, metrics as a DataFrame."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from app.config import PROJECT_ROOT, Settings
from app.db import dispose_engines
from app.migrate import migrate
from sweeplab.client import COLUMNS, Client, ClientError, SweepProgress
from tests.conftest import (
    PG_URL,
    LiveServer,
    _drop_pg_database,
    _fresh_pg_database,
    make_settings,
    settings_env,
    start_worker,
    sweeplab_command,
)


def shared_server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    """One live server (and database) for a whole test module: starting one costs seconds.
    Its tests tell their sweeps apart by name."""
    folder = tmp_path_factory.mktemp("server")
    url = _fresh_pg_database(PG_URL) if PG_URL else f"sqlite:///{folder / 'sweeplab.db'}"
    migrate(url)
    server = LiveServer(make_settings(url, data_dir, folder / "artifacts"), folder / "server.log").start()
    yield server
    server.stop()
    dispose_engines()
    if PG_URL:
        _drop_pg_database(url)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    yield from shared_server(tmp_path_factory, data_dir)


def test_import_sweeplab_stays_light() -> None:
    code = ("import sys, sweeplab; assert 'httpx' not in sys.modules; from sweeplab import Client; "
            "heavy = {'keras', 'tensorflow', 'pandas'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)


def log_runs(client: Client, sweep: str = "notebook") -> list[dict[str, object]]:
    """Three external runs of two configs with a few epochs each (one NaN)."""
    runs = []
    for seed, config in ((0, {"hidden": [8]}), (1, {"hidden": [8]}), (0, {"hidden": [16]})):
        run = client.create_external_run(sweep, config, seed, epochs=3)
        for epoch in range(4):
            loss = float("nan") if (seed, epoch) == (1, 2) else 1.0 / (epoch + 1) + seed
            client.log_epoch(run["id"], epoch, {"loss": None if loss != loss else loss, "accuracy": epoch / 3})
        runs.append(client.finish_run(run["id"]))
    return runs


def test_metrics_dataframe_matches_the_api(server: LiveServer) -> None:
    with Client(server.url) as client:
        runs = log_runs(client, "frame")
        sweep_id = int(runs[0]["sweep_id"])  # type: ignore[call-overload]
        df = client.metrics(sweep_id)
        assert tuple(df.columns) == COLUMNS
        assert df["value"].dtype == "float64" and df["epoch"].dtype == "int64"
        assert len(df) == 3 * 4 * 2
        for run in client.runs(sweep_id):
            series = client.run_metrics(run["id"])
            for key, s in series.items():
                part = df[(df["run"] == run["id"]) & (df["key"] == key)].sort_values("epoch")
                assert part["epoch"].tolist() == s["epochs"]
                expected = [float("nan") if v is None else v for v in s["values"]]
                pd.testing.assert_series_equal(part["value"].reset_index(drop=True), pd.Series(expected),
                                               check_names=False)
                assert set(part["config"]) == {run["config_id"]} and set(part["seed"]) == {run["seed"]}
                assert set(part["config_label"]) == {run["config_label"]}
        # Replicates of one config: the notebook's own grouping is a groupby away.
        final = df[(df["key"] == "accuracy") & (df["epoch"] == 3)].groupby("config_label")["run"].count()
        assert final.to_dict() == {"hidden=[16]": 1, "hidden=[8]": 2}
        assert client.metrics(sweep_id, keys=["loss"])["key"].unique().tolist() == ["loss"]
        with pytest.raises(ClientError) as err:
            client.metrics(999_999)
        assert err.value.status_code == 404 and not err.value.retryable


def test_wait_shows_progress_until_the_runs_end(server: LiveServer,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with Client(server.url) as client:
        runs = [client.create_external_run("waiting", {"w": 1}, seed, epochs=4) for seed in range(3)]

        def train() -> None:
            with Client(server.url) as other:
                for epoch in range(1, 5):
                    for run in runs:
                        other.log_epoch(run["id"], epoch, {"loss": 1.0 / epoch})
                    time.sleep(0.15)
                for run in runs:
                    other.finish_run(run["id"], "failed" if run is runs[-1] else "succeeded")

        trainer = threading.Thread(target=train)
        trainer.start()
        ok = client.wait(int(runs[0]["sweep_id"]), poll=0.1, timeout=30)
        trainer.join()
    assert ok is False  # one run failed
    err = capsys.readouterr().err
    assert "3/3 runs" in err and "epochs/s" in err and "ETA" in err and "1 failed" in err


def test_progress_counts_epochs_left_of_active_runs_only() -> None:
    runs = [{"status": "succeeded", "epochs": 5, "last_epoch": 5}, {"status": "running", "epochs": 5, "last_epoch": 2},
            {"status": "queued", "epochs": 5, "last_epoch": -1}, {"status": "cancelled", "epochs": 5, "last_epoch": -1}]
    assert SweepProgress.tally(runs) == {"ended": 2, "total": 4, "epochs_done": 7, "epochs_left": 8,
                                        "running": 1, "failed": 0}
    bar = SweepProgress(enabled=False)
    assert bar.update(runs).startswith("0.0 epochs/s, ETA ?")
    bar.start = (time.monotonic() - 2.0, 3)  # 4 epochs in 2 s: 2 epochs/s, 8 left
    assert bar.update(runs).startswith("2.0 epochs/s, ETA 00:04")
    bar.close()


def test_submit_a_yaml_file_then_cancel(server: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodel: {hidden: [4]}\nepochs: 2\nreplicates: 3\ngrid: {model.hidden: [[4], [8]]}\n")
    with Client(server.url) as client:
        sweep = client.submit(spec)
        assert (sweep["name"], sweep["runs"], sweep["configs"]) == ("tiny", 6, 2)
        assert client.sweep(sweep["id"])["status_counts"]["queued"] == 6
        assert sweep["id"] in [s["id"] for s in client.sweeps()]
        assert client.cancel(sweep["id"])["status_counts"]["cancelled"] == 6
        assert client.wait(sweep["id"], progress=False) is False
        with pytest.raises(ClientError, match="422"):
            client.submit({"name": "bad", "epochs": 0})


def test_an_unreachable_server_is_a_retryable_client_error() -> None:
    with Client("http://127.0.0.1:9", timeout=1) as client, pytest.raises(ClientError) as err:
        client.sweeps()
    assert err.value.retryable and err.value.status_code is None


@pytest.mark.slow
def test_cli_submit_wait_shows_the_bar(live_server: LiveServer, settings: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodel: {hidden: [4]}\nepochs: 3\nreplicates: 4\n")
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        done = subprocess.run(sweeplab_command("submit", str(spec), "--wait", "--url", live_server.url),
                              cwd=PROJECT_ROOT, env=settings_env(settings), capture_output=True, text=True,
                              timeout=60)
    finally:
        worker.terminate()
        worker.wait(10)
    assert done.returncode == 0, done.stderr
    assert "4 runs queued" in done.stdout
    assert "4/4 runs" in done.stderr and "epochs/s" in done.stderr
