"""sweeplab.Client against a live server: submit, wait with progress, cancel, metrics as a DataFrame."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, select, update

from app.config import PROJECT_ROOT, Settings
from app.db import dispose_engines, write_session
from app.migrate import migrate
from app.models import Run
from app.services.sweeps import create_sweep, parse_spec, progress
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


def set_runs(engine: Engine, sweep_id: int, states: list[tuple[str, int]]) -> None:
    """Give the sweep's runs these (status, last_epoch), in id order."""
    with write_session(engine) as s:
        ids = list(s.scalars(select(Run.id).where(Run.sweep_id == sweep_id).order_by(Run.id)))
        for run_id, (status, last_epoch) in zip(ids, states, strict=True):
            s.execute(update(Run).where(Run.id == run_id).values(status=status, last_epoch=last_epoch))


def test_progress_counts_epochs_left_of_active_runs_only(engine: Engine) -> None:
    """Counted by the database for several sweeps at once: what `wait` draws from one request."""
    first = create_sweep(engine, parse_spec({"name": "a", "epochs": 5, "replicates": 4}), 100, 3).id
    second = create_sweep(engine, parse_spec({"name": "b", "epochs": 3, "replicates": 2}), 100, 3).id
    set_runs(engine, first, [("succeeded", 5), ("running", 2), ("queued", -1), ("cancelled", -1)])
    set_runs(engine, second, [("failed", 1), ("running", 0)])
    answer = progress(engine, [first, second, first])
    a, b = (p.model_dump() for p in answer.sweeps)
    assert a == {"id": first, "runs": 4, "ended": 2, "running": 1, "succeeded": 1, "failed": 0, "pruned": 0,
                 "epochs_done": 7, "epochs_left": 8, "more_to_come": False}
    assert b == {"id": second, "runs": 2, "ended": 1, "running": 1, "succeeded": 0, "failed": 1, "pruned": 0,
                 "epochs_done": 1, "epochs_left": 3, "more_to_come": False}
    total = answer.total.model_dump()
    assert total == {"runs": 6, "ended": 3, "running": 2, "succeeded": 1, "failed": 1, "pruned": 0,
                     "epochs_done": 8, "epochs_left": 11, "more_to_come": False}
    bar = SweepProgress(enabled=False)
    assert bar.update(total).startswith("0.0 epochs/s, ETA ?, 2 running, 1 failed")
    bar.start = (time.monotonic() - 2.0, 4)  # 4 epochs in 2 s: 2 epochs/s, 11 left
    assert bar.update(total).startswith("2.0 epochs/s, ETA 00:05")
    assert (bar.bar.n, bar.bar.total) == (3, 6)
    bar.close()


def test_progress_of_several_sweeps_in_one_request(server: LiveServer) -> None:
    with Client(server.url) as client:
        runs = [client.create_external_run(name, {"w": 1}, 0, epochs=4) for name in ("p-one", "p-two")]
        ids = [int(r["sweep_id"]) for r in runs]
        client.log_epoch(runs[0]["id"], 1, {"loss": 1.0})
        answer = client.progress(ids)
        assert [s["id"] for s in answer["sweeps"]] == ids
        assert answer["total"] == {"runs": 2, "ended": 0, "running": 2, "succeeded": 0, "failed": 0,
                                   "pruned": 0, "epochs_done": 1, "epochs_left": 7, "more_to_come": False}
        with pytest.raises(ClientError) as err:
            client.progress([ids[0], 999_999])
        assert err.value.status_code == 404 and err.value.code == "not_found"


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
        with pytest.raises(ClientError, match="422") as err:
            client.submit({"name": "bad", "epochs": 0})
        assert err.value.code == "invalid_spec" and not err.value.retryable
        assert [f["loc"] for f in err.value.fields] == ["epochs"] and "greater than" in err.value.fields[0]["msg"]


def test_an_unreachable_server_is_a_retryable_client_error() -> None:
    with Client("http://127.0.0.1:9", timeout=1) as client, pytest.raises(ClientError) as err:
        client.sweeps()
    assert err.value.retryable and err.value.status_code is None


BAR = re.compile(r"runs: +\d+%\|[^|]*\| \d+/\d+ runs \[[^\]]*\]")
PROGRESS_REQUEST = re.compile(r'"GET (/api/sweeps/progress\?\S*) HTTP/1.1" 200')


@pytest.mark.slow
def test_cli_submit_wait_shows_the_bar_from_one_request_per_tick(live_server: LiveServer, settings: Settings,
                                                                  tmp_path: Path) -> None:
    """Two sweeps: stderr holds the bar and nothing else (no httpx or INFO line), and every
    request after submitting is one progress request naming both sweeps (the server's access log)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodel: {hidden: [4]}\nepochs: 20\nreplicates: 4\n---\n"
                    "name: other\nmodel: {hidden: [8]}\nepochs: 20\nreplicates: 4\n")
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        done = subprocess.run(sweeplab_command("submit", str(spec), "--wait", "--url", live_server.url),
                              cwd=PROJECT_ROOT, env=settings_env(settings), capture_output=True, text=True,
                              timeout=120)
    finally:
        worker.terminate()
        worker.wait(10)
    assert done.returncode == 0, done.stderr
    assert "4 runs queued" in done.stdout
    assert "8/8 runs" in done.stderr and "epochs/s" in done.stderr
    assert "httpx" not in done.stderr and "INFO" not in done.stderr and "HTTP/1.1" not in done.stderr
    shown = [part.strip() for part in re.split(r"[\r\n]", done.stderr) if part.strip()]
    assert shown and all(BAR.fullmatch(part) for part in shown), shown
    access = live_server.log_path.read_text(errors="replace")
    after_submit = access[access.rindex('"POST /api/sweeps HTTP/1.1" 201'):]
    requests = re.findall(r'"(GET|POST|PUT|DELETE) (\S+) HTTP/1.1"', after_submit)[1:]
    sweep_ids = sorted(int(m) for m in re.findall(r"sweep (\d+) ", done.stdout))
    expected = "/api/sweeps/progress?" + "&".join(f"ids={i}" for i in sweep_ids)
    assert requests and all(r == ("GET", expected) for r in requests), requests
    assert len(requests) <= len(shown)  # each tick: one request, one redraw of the bar
