"""SweeplabCallback inside real `model.fit` calls (tiny data, tiny models) against a live server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from app.config import PROJECT_ROOT, Settings
from sweeplab.client import Client
from tests.conftest import LiveServer, settings_env, wait_for
from tests.e2e.test_client import shared_server

keras = pytest.importorskip("keras")
from sweeplab import callback as sweeplab_callback  # noqa: E402  (needs keras)
from sweeplab.callback import SweeplabCallback, clean_logs  # noqa: E402

pytestmark = pytest.mark.slow
KEYS = {"loss", "accuracy", "top3", "val_loss", "val_accuracy", "val_top3"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[LiveServer]:
    yield from shared_server(tmp_path_factory, data_dir)


@pytest.fixture(autouse=True)
def delivered() -> Iterator[None]:
    """Every test leaves nothing undelivered behind (and the process nothing to wait for at exit)."""
    yield
    assert sweeplab_callback.flush(timeout=30)


def tiny_data(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6)).astype("float32"), rng.integers(0, 10, n)


def tiny_model(seed: int, eager: bool) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6, 6)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")],
                  run_eagerly=eager)  # tracing a graph costs more than 3 steps an epoch
    return model


X, Y = tiny_data()
VALIDATION = (X[:32], Y[:32])


def callback(**kw: Any) -> SweeplabCallback:
    """A callback given fit's data for epoch 0 (Keras shows a callback neither fit's data nor its
    validation data)."""
    return SweeplabCallback(validation_data=VALIDATION, training_data=(X, Y), **kw)


def fit(cb: Any, epochs: int = 3, extra: list[Any] | None = None, seed: int = 0, eager: bool = True) -> Any:
    return tiny_model(seed, eager).fit(X, Y, epochs=epochs, batch_size=32, validation_data=VALIDATION, verbose=0,
                                       callbacks=[*(extra or []), cb])


def test_every_epoch_and_every_key_reaches_the_server(server: LiveServer) -> None:
    cb = callback(url=server.url, sweep="tiny", config={"hidden": [8], "lr": np.float32(0.5)}, seed=3)
    history = fit(cb, epochs=3, eager=False).history
    client = Client(server.url)
    run = client.run(cb.run_id)  # type: ignore[arg-type]
    assert (run["status"], run["source"], run["seed"], run["epochs"], run["last_epoch"]) == (
        "succeeded", "external", 3, 3, 3)
    assert run["config"] == {"hidden": [8], "lr": 0.5}
    series = client.run_metrics(run["id"])
    assert set(series) == KEYS
    for key in KEYS:  # epoch 0 is the untrained model, on the training and the validation data
        assert series[key]["epochs"] == [0, 1, 2, 3]
        assert series[key]["values"][1:] == pytest.approx(history[key], rel=1e-6)
    assert series["loss"]["values"][0] > series["loss"]["values"][-1]
    assert run["train_seconds"] > 0


def test_a_server_that_goes_away_mid_fit_loses_no_epoch(server: LiveServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    restarted = threading.Thread(target=server.start)

    class Outage(keras.callbacks.Callback):  # runs before SweeplabCallback in each epoch
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                server.stop()
            if epoch == 4:
                restarted.start()  # same port, same database; training goes on meanwhile

    cb = callback(url=server.url, sweep="outage", config={"w": 8}, seed=0, flush_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="sweeplab.callback"):
        history = fit(cb, epochs=8, extra=[Outage()]).history  # never raises
        restarted.join()
        assert sweeplab_callback.flush(timeout=30)
    assert len(history["loss"]) == 8
    assert "retrying" in caplog.text
    client = Client(server.url)
    run = client.run(cb.run_id)  # type: ignore[arg-type]
    assert run["status"] == "succeeded"
    series = client.run_metrics(run["id"])
    assert {key: s["epochs"] for key, s in series.items()} == {key: list(range(9)) for key in KEYS}
    assert series["loss"]["values"][1:] == pytest.approx(history["loss"], rel=1e-6)


def test_a_server_down_for_the_whole_fit_gets_the_run_when_it_returns(server: LiveServer) -> None:
    server.stop()
    cb = callback(url=server.url, sweep="late", seed=0, flush_timeout=0.2)
    assert len(fit(cb, epochs=2).history["loss"]) == 2
    assert cb.run_id is None  # nothing reached the server yet
    server.start()
    assert sweeplab_callback.flush(timeout=30)
    client = Client(server.url)
    [sweep] = [s for s in client.sweeps() if s["name"] == "late"]
    [run] = client.runs(sweep["id"])
    assert (run["id"], run["status"], run["last_epoch"]) == (cb.run_id, "succeeded", 2)


def test_a_notebook_loop_of_replicates_is_one_config(server: LiveServer) -> None:
    config = {"hidden": [8], "optimizer": "adam"}
    for seed in range(5):
        fit(callback(url=server.url, sweep="notebook", config=dict(config), seed=seed),
            epochs=2, seed=seed)
    client = Client(server.url)
    [sweep] = [s for s in client.sweeps() if s["name"] == "notebook"]
    assert (sweep["runs"], sweep["configs"], sweep["status_counts"]["succeeded"]) == (5, 1, 5)
    [cfg] = client.configs(sweep["id"])
    assert cfg["label"] == 'hidden=[8] · optimizer="adam"'
    runs = client.runs(sweep["id"])
    assert sorted(r["seed"] for r in runs) == [0, 1, 2, 3, 4]
    # The charts' data: five runs of one config, each with its val_accuracy at epochs 0..2 (bands).
    series = client._call("GET", f"/api/sweeps/{sweep['id']}/series")
    assert {r["config_id"] for r in series["runs"]} == {cfg["id"]}
    assert all(r["series"]["val_accuracy"]["epochs"] == [0, 1, 2] for r in series["runs"])


def test_a_fit_that_raises_ends_its_run_failed(server: LiveServer) -> None:
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                raise RuntimeError("boom")

    # Keras calls no callback when fit raises; as a context manager the callback sees it.
    with pytest.raises(RuntimeError, match="boom"), callback(url=server.url, sweep="boom", seed=0) as cb:
        fit(cb, epochs=5, extra=[Boom()])
    client = Client(server.url)
    wait_for(lambda: cb.run_id is not None and client.run(cb.run_id)["status"] == "failed", 10,
             message="the run to end failed")
    run = client.run(cb.run_id)  # type: ignore[arg-type]
    assert "model.fit raised RuntimeError: boom" in run["error"] and run["last_epoch"] == 1


def test_epoch_zero_needs_the_data_and_is_skipped_when_fit_resumes(server: LiveServer) -> None:
    client = Client(server.url)
    plain = SweeplabCallback(url=server.url, sweep="no data", seed=0)
    fit(plain, epochs=2)
    assert {s["epochs"][0] for s in client.run_metrics(plain.run_id).values()} == {1}  # type: ignore[arg-type]
    resumed = callback(url=server.url, sweep="resumed", seed=0)
    tiny_model(0, True).fit(X, Y, epochs=3, initial_epoch=1, validation_data=VALIDATION, verbose=0,
                            callbacks=[resumed])
    assert {s["epochs"][0] for s in client.run_metrics(resumed.run_id).values()} == {2}  # type: ignore[arg-type]


@pytest.fixture
def strict_server(settings: Settings, engine: Engine, tmp_path: Path) -> Iterator[LiveServer]:
    """A server that ends an external run silent for 3 s (heartbeats every 0.5 s), reaping often."""
    strict = settings.model_copy(update={"external_stale_seconds": 3.0, "reap_seconds": 0.5})
    server = LiveServer(strict, tmp_path / "server.log").start()
    yield server
    server.stop()


RAISES_AND_LIVES_ON = """
import sys, time, numpy as np, keras
from sweeplab import SweeplabCallback, callback
keras.utils.set_random_seed(0)
x, y = np.random.default_rng(0).random((96, 6, 6)).astype("float32"), np.arange(96) % 10
model = keras.Sequential([keras.Input((6, 6)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)

class Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("boom")

cb = SweeplabCallback(url=sys.argv[1], sweep="raised", seed=0)
try:
    model.fit(x, y, epochs=50, verbose=0, callbacks=[Boom(), cb])
except RuntimeError:
    callback.flush(10)
    print(cb.run_id, flush=True)
time.sleep(300)  # a notebook's kernel: the process lives on after the fit raised
"""


def test_heartbeats_follow_the_fit_s_progress(strict_server: LiveServer, settings: Settings,
                                              tmp_path: Path) -> None:
    """Heartbeats go out while a fit makes progress, however slow its epochs, and stop once a fit
    raised (Keras tells no callback): the server then ends the run as one that stopped reporting,
    while the process lives on as a notebook's would."""
    client = Client(strict_server.url)

    class Slow(keras.callbacks.Callback):  # batches a second apart: epochs far longer than 3 s of silence
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            time.sleep(1.0)

    slow = callback(url=strict_server.url, sweep="slow", seed=0)
    fit(slow, epochs=2, extra=[Slow()])
    assert client.run(slow.run_id)["status"] == "succeeded"  # type: ignore[arg-type]
    script = tmp_path / "raises.py"
    script.write_text(RAISES_AND_LIVES_ON)
    proc = subprocess.Popen([sys.executable, str(script), strict_server.url], cwd=PROJECT_ROOT,
                            env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        run_id = int(proc.stdout.readline())
        wait_for(lambda: client.run(run_id)["status"] == "failed", 20, message="the silent run to be ended")
        run = client.run(run_id)
        assert "stopped reporting" in run["error"] and run["last_epoch"] == 1
    finally:
        proc.kill()
        proc.wait()


def test_cancelling_the_run_stops_training(server: LiveServer) -> None:
    client = Client(server.url)

    class Canceller(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                assert sweeplab_callback.flush(timeout=10)
                client.http.post(f"/api/runs/{cb.run_id}/cancel")
            sweeplab_callback.flush(timeout=10)  # let the acks come back

    cb = callback(url=server.url, sweep="cancel", seed=0)
    epochs = len(fit(cb, epochs=50, extra=[Canceller()]).history["loss"])
    assert epochs < 10
    assert client.run(cb.run_id)["status"] == "cancelled"  # type: ignore[arg-type]


def test_a_refused_run_never_breaks_training(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    cb = callback(url=server.url, sweep="x" * 300, seed=0)  # the server refuses the name
    with caplog.at_level(logging.WARNING, logger="sweeplab.callback"):
        assert len(fit(cb, epochs=2).history["loss"]) == 2
    assert "refused the run" in caplog.text and cb.run_id is None


def test_logs_are_cleaned_for_the_server() -> None:
    logs = {"loss": np.float32(0.5), "acc": float("nan"), "inf": float("inf"), "name": "text", "x" * 101: 1.0,
            "learning_rate": np.array(0.001)}
    # JSON has no NaN or infinity: they go by name, to be stored as a worker's are (test_metric_values).
    assert clean_logs(logs) == {"loss": 0.5, "acc": "NaN", "inf": "Infinity", "learning_rate": pytest.approx(0.001)}
    assert clean_logs({"diverged": -np.inf}) == {"diverged": "-Infinity"}


class RefusingServer:
    """A stand-in for a sweeplab server that answers 500 to every post of epoch 1 and 422 to epoch
    2 (as a server with a bug, or one that changed its rules, would): the callback's queue must not
    wait on them forever. It records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                epoch = body.get("epoch") if self.path.endswith("/epochs") else None
                outer.requests.append((self.path.rsplit("/", 1)[-1], epoch))
                status, answer = 200, {"run_id": 7, "epoch": epoch, "stored": 1, "cancel_requested": False}
                if self.path == "/api/external/runs":
                    status, answer = 201, {"id": 7}
                elif self.path.endswith("/heartbeat"):
                    answer = {"run_id": 7, "cancel_requested": False, "heartbeat_seconds": 5.0}
                elif epoch == 1:
                    status, answer = 500, {"error": {"code": "internal_error", "message": "internal error"}}
                elif epoch == 2:
                    status, answer = 422, {"error": {"code": "invalid_input", "message": "no"}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_a_refused_post_does_not_hold_up_the_later_ones(caplog: pytest.LogCaptureFixture) -> None:
    server = RefusingServer()
    try:
        cb = callback(url=server.url, sweep="refused", seed=0, flush_timeout=30)
        with caplog.at_level(logging.WARNING, logger="sweeplab.callback"):
            fit(cb, epochs=4)
    finally:
        server.close()
    epochs = [epoch for kind, epoch in server.requests if kind == "epochs"]
    # The 500 is tried a few times, the 422 once; the epochs after them and the finish go on.
    assert epochs == [0, *[1] * sweeplab_callback.MAX_TRIES, 2, 3, 4]
    assert server.requests[-1] == ("finish", None)
    assert ("heartbeat", None) in server.requests
    assert "refused epoch 1 of run 7 (500: internal error) after 5 tries; dropped it" in caplog.text
    assert "refused epoch 2 of run 7 (422: no); dropped it" in caplog.text
