"""External runs always end: heartbeats, the staleness rule of the reaper, cancel of a silent run,
and real client processes killed with SIGKILL, SIGTERM or frozen with SIGSTOP."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, update

from app.config import PROJECT_ROOT, Settings
from app.db import write_session
from app.errors import InvalidTransition
from app.main import create_app
from app.migrate import migrate
from app.models import Run
from app.services.external import (
    ExternalRunRequest,
    cancel_grace_seconds,
    create_external_run,
    heartbeat_seconds,
    record_external_epoch,
)
from app.services.queue import claim_runs
from app.services.reaping import reap_all
from sweeplab.client import Client
from tests.conftest import LiveServer, make_settings, settings_env, wait_for
from tests.factories import events_of, get_run, make_sweep, metric_rows, runs_of

STALE = 2.0  # seconds, for the live servers below (their reaper runs every 0.5 s)


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The API, its own reaper blind to external runs: these tests call the reaper themselves."""
    quiet = settings.model_copy(update={"reap_seconds": 3600.0, "external_stale_seconds": 1e9})
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield client


def start_run(engine: Engine, seed: int = 0) -> int:
    run, _ = create_external_run(engine, ExternalRunRequest(sweep="stale", config={"w": 1}, seed=seed), 10_000)
    return run.id


def silence(engine: Engine, run_id: int, seconds: float) -> None:
    """Make the run's last report SECONDS older, as if its client had been silent that long."""
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=Run.heartbeat_at - seconds))


def test_a_silent_run_ends_failed_and_refuses_what_comes_later(settings: Settings, engine: Engine,
                                                               api: TestClient) -> None:
    run_id, fresh = start_run(engine, 0), start_run(engine, 1)
    silence(engine, run_id, settings.external_stale_seconds + 100)
    reaped = reap_all(engine, settings)
    assert (reaped.external_failed, reaped.external_cancelled, reaped.changed) == ([run_id], [], True)
    run = get_run(engine, run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error is not None and run.error.startswith("the client stopped reporting: no epoch or heartbeat for")
    assert int(run.error.split()[-2]) >= settings.external_stale_seconds + 100  # how long, from the DB clock
    assert events_of(engine, run_id)[-1] == "failed"
    assert get_run(engine, fresh).status == "running"
    for path, body in (("epochs", {"epoch": 1, "metrics": {"loss": 1.0}}), ("heartbeat", None),
                       ("finish", {"status": "succeeded"})):
        late = api.post(f"/api/runs/{run_id}/{path}", json=body)
        assert late.status_code == 409, path
        assert "the client stopped reporting" in late.json()["error"]["message"]
    assert api.post(f"/api/runs/{run_id}/finish", json={"status": "failed"}).json()["status"] == "failed"
    assert reap_all(engine, settings).external_failed == []  # ended once


def test_the_reaper_leaves_reporting_and_queued_runs_alone(settings: Settings, engine: Engine) -> None:
    run_id = start_run(engine)
    silence(engine, run_id, settings.external_stale_seconds - 30)
    make_sweep(engine)
    [claim] = claim_runs(engine, "w1", 1, settings.lease_seconds)
    with write_session(engine) as s:  # a worker's run with an old heartbeat but a live lease
        s.execute(update(Run).where(Run.id == claim.run_id).values(heartbeat_at=0.0))
    assert not reap_all(engine, settings).changed
    assert get_run(engine, run_id).status == "running"
    assert get_run(engine, claim.run_id).status == "running"


def test_a_heartbeat_keeps_a_run_alive(settings: Settings, engine: Engine, api: TestClient) -> None:
    run_id = start_run(engine)
    silence(engine, run_id, settings.external_stale_seconds + 100)
    beat = api.post(f"/api/runs/{run_id}/heartbeat")
    assert beat.status_code == 200, beat.text
    assert beat.json() == {"run_id": run_id, "cancel_requested": False,
                           "heartbeat_seconds": heartbeat_seconds(settings.external_stale_seconds)}
    assert not reap_all(engine, settings).changed
    assert get_run(engine, run_id).status == "running"
    api.post(f"/api/runs/{run_id}/cancel")
    assert api.post(f"/api/runs/{run_id}/heartbeat").json()["cancel_requested"] is True


def test_heartbeats_are_for_running_external_runs_only(settings: Settings, engine: Engine, api: TestClient) -> None:
    queued = runs_of(engine, make_sweep(engine).id)[0].id
    assert api.post(f"/api/runs/{queued}/heartbeat").status_code == 409
    assert api.post("/api/runs/999999/heartbeat").status_code == 404
    guarded = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(guarded), raise_server_exceptions=False) as other:
        assert other.post(f"/api/runs/{start_run(engine)}/heartbeat").status_code == 401


def test_a_silent_run_asked_to_stop_ends_cancelled_after_a_few_heartbeats(settings: Settings, engine: Engine,
                                                                           api: TestClient) -> None:
    grace = cancel_grace_seconds(settings.external_stale_seconds)
    assert grace < settings.external_stale_seconds
    silent, alive = start_run(engine, 0), start_run(engine, 1)
    for run_id in (silent, alive):
        assert api.post(f"/api/runs/{run_id}/cancel").json()["cancel_requested"] is True
    silence(engine, silent, grace + 1)
    silence(engine, alive, grace - 5)
    assert reap_all(engine, settings).external_cancelled == [silent]
    run = get_run(engine, silent)
    assert run.status == "cancelled" and run.error is not None and "stopped reporting" in run.error
    assert get_run(engine, alive).status == "running"
    assert api.post(f"/api/runs/{silent}/cancel").status_code == 200  # cancelling twice: the same answer


@pytest.mark.parametrize("round_", range(12))
def test_an_epoch_racing_the_reaper_lands_whole_or_not_at_all(settings: Settings, engine: Engine,
                                                               round_: int) -> None:
    run_id = start_run(engine)
    silence(engine, run_id, settings.external_stale_seconds + 1)
    barrier, outcome = threading.Barrier(2), dict[str, Any]()

    def epoch() -> None:
        barrier.wait()
        try:
            record_external_epoch(engine, run_id, 1, {"loss": 0.5})
            outcome["epoch"] = "stored"
        except InvalidTransition:
            outcome["epoch"] = "409"

    def reap() -> None:
        barrier.wait()
        outcome["reaped"] = reap_all(engine, settings).external_failed

    threads = [threading.Thread(target=epoch), threading.Thread(target=reap)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status, rows = get_run(engine, run_id).status, metric_rows(engine, run_id)
    if outcome["epoch"] == "stored":  # it landed first: the run reported, so it is not stale
        assert (status, outcome["reaped"], rows) == ("running", [], [("loss", 1, 0.5)])
    else:  # the reaper ended it first: nothing of the epoch is stored
        assert (status, outcome["reaped"], rows) == ("failed", [run_id], [])


# Real client processes against a live server whose runs go stale after STALE seconds.

CLIENT = """
import sys, time
from sweeplab.client import Client
client = Client(sys.argv[1])
run = client.create_external_run("killed", {"w": 1}, int(sys.argv[2]))
print(run["id"], flush=True)
epoch = 0
while True:
    epoch += 1
    client.log_epoch(run["id"], epoch, {"loss": 1.0 / epoch})
    time.sleep(0.1)
"""

FIT = """
import sys, numpy as np, keras
from sweeplab import SweeplabCallback
rng = np.random.default_rng(0)
x, y = rng.random((64, 4)).astype("float32"), rng.integers(0, 2, 64)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=100_000, batch_size=32, verbose=0,
          callbacks=[SweeplabCallback(url=sys.argv[1], sweep="terminated", seed=int(sys.argv[2]))])
"""


@pytest.fixture
def stale_server(database_url: str, data_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(database_url, data_dir, tmp_path / "artifacts", external_stale_seconds=STALE,
                             reap_seconds=0.5)
    migrate(settings.database_url)
    server = LiveServer(settings, tmp_path / "server.log").start()
    yield server
    server.stop()


def spawn(server: LiveServer, script: str, seed: int, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, server.url, str(seed)], cwd=PROJECT_ROOT,
                            env=settings_env(server.settings), stdout=subprocess.PIPE, stderr=open(log, "a"),
                            text=True)


def reported(client: Client, run_id: int, epoch: int) -> bool:
    return client.run(run_id)["last_epoch"] >= epoch


def ends(client: Client, run_id: int, statuses: set[str], within: float) -> dict[str, Any]:
    wait_for(lambda: client.run(run_id)["status"] in statuses, within, interval=0.1,
             message=f"run {run_id} to end {statuses}")
    return client.run(run_id)


@pytest.mark.slow
def test_a_killed_client_s_run_ends_failed(stale_server: LiveServer, tmp_path: Path) -> None:
    proc = spawn(stale_server, CLIENT, 0, tmp_path / "client.log")
    try:
        assert proc.stdout is not None
        run_id = int(proc.stdout.readline())
        client = Client(stale_server.url)
        wait_for(lambda: reported(client, run_id, 2), 20, message="epoch 2")
        proc.kill()
        proc.wait(10)
        killed = time.monotonic()
        run = ends(client, run_id, {"failed", "succeeded", "cancelled"}, STALE + 8)
        assert run["status"] == "failed"
        assert run["error"].startswith("the client stopped reporting: no epoch or heartbeat for")
        assert time.monotonic() - killed >= STALE - 0.5  # not before it was stale
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_frozen_client_s_run_cancelled_from_the_api_ends_cancelled(stale_server: LiveServer,
                                                                      tmp_path: Path) -> None:
    proc = spawn(stale_server, CLIENT, 1, tmp_path / "client.log")
    try:
        assert proc.stdout is not None
        run_id = int(proc.stdout.readline())
        client = Client(stale_server.url)
        wait_for(lambda: reported(client, run_id, 2), 20, message="epoch 2")
        proc.send_signal(signal.SIGSTOP)
        assert client.http.post(f"/api/runs/{run_id}/cancel").json()["cancel_requested"] is True
        run = ends(client, run_id, {"failed", "succeeded", "cancelled"}, STALE + 8)
        assert run["status"] == "cancelled" and "stopped reporting" in run["error"]
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()


@pytest.mark.slow
def test_a_fit_sent_sigterm_ends_its_run_at_once(stale_server: LiveServer, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    proc = spawn(stale_server, FIT, 2, tmp_path / "fit.log")
    try:
        client = Client(stale_server.url)

        def run_id() -> int | None:
            sweeps = [s for s in client.sweeps() if s["name"] == "terminated"]
            runs = client.runs(sweeps[0]["id"]) if sweeps else []
            return int(runs[0]["id"]) if runs and runs[0]["last_epoch"] >= 2 else None

        wait_for(lambda: run_id() is not None, 60, message="the fit's epoch 2")
        rid = run_id()
        assert rid is not None
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        run = ends(client, rid, {"failed", "succeeded", "cancelled"}, 8)
        # Well before the staleness rule could: the callback said so itself.
        assert (run["status"], run["error"]) == ("failed", "the training process got SIGTERM")
        assert time.monotonic() - sent < 8
        assert proc.wait(10) == -signal.SIGTERM  # then it died of the signal, as without the callback
    finally:
        proc.kill()


@pytest.mark.slow
def test_heartbeats_keep_a_run_with_a_long_epoch_alive(stale_server: LiveServer) -> None:
    keras = pytest.importorskip("keras")
    import numpy as np

    from sweeplab import callback as sweeplab_callback

    callback_base: Any = keras.callbacks.Callback

    class LongEpoch(callback_base):  # type: ignore[misc]
        """Epoch 1 lasts three times the staleness: 8 batches of 0.75 s each. No epoch ends meanwhile;
        only the heartbeats (sent while batches make progress) tell the server the fit is alive."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if self.epoch == 1:
                time.sleep(3 * STALE / 8)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

    rng = np.random.default_rng(0)
    x, y = rng.random((256, 4)).astype("float32"), rng.integers(0, 2, 256)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    cb = sweeplab_callback.SweeplabCallback(url=stale_server.url, sweep="long epoch", seed=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[LongEpoch(), cb])
    assert sweeplab_callback.flush(timeout=30)
    run = Client(stale_server.url).run(cb.run_id)  # type: ignore[arg-type]
    assert (run["status"], run["last_epoch"], run["error"]) == ("succeeded", 3, None)
