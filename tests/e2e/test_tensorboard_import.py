"""`sweeplab import-tensorboard` on logs Keras' own TensorBoard callback wrote during real small fits
(with and without the HParams plugin's KerasCallback), against a live server: runs, configs,
seeds and every epoch compared with Keras' History; a second import imports nothing; an
interrupted one is finished; a regex that misses a run posts nothing; TensorFlow is never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import PROJECT_ROOT
from sweeplab.tensorboard_import import RunDir, client_token
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow
PATTERN = r"width=(?P<width>\d+)/seed=(?P<seed>\d+)"
FIT = r'''
import json, sys
import numpy as np, keras
from tensorboard.plugins.hparams import api as hp

logs = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.random((128, 8)).astype("float32")
y = (x.sum(axis=1) > 4).astype("int32")
histories = {}
for name, width, seed, hparams in [("plain/width=4/seed=0", 4, 0, False), ("plain/width=4/seed=1", 4, 1, False),
                                   ("plain/width=8/seed=0", 8, 0, False), ("hp/a", 4, 0, True), ("hp/b", 4, 1, True)]:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [keras.callbacks.TensorBoard(f"{logs}/{name}")]
    if hparams:
        callbacks.append(hp.KerasCallback(f"{logs}/{name}", {"width": width, "optimizer": "adam", "seed": seed}))
    history = model.fit(x, y, epochs=2, batch_size=32, validation_split=0.25, verbose=0, callbacks=callbacks)
    histories[name] = history.history
print("RESULT " + json.dumps(histories))
'''


def cli_env(server: LiveServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPLAB_")}
    env.update(SWEEPLAB_URL=server.url, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


Logs = tuple[Path, dict[str, dict[str, list[float]]]]


@pytest.fixture(scope="module")
def tb_logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    """Five small fits' logs (read only by the tests) and Keras' History of each, by run directory."""
    tmp_path = tmp_path_factory.mktemp("tensorboard")
    script, logs = tmp_path / "fit.py", tmp_path / "logs"
    script.write_text(FIT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPLAB_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(script), str(logs)], env=env, capture_output=True, text=True,
                          timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    histories: dict[str, dict[str, list[float]]] = json.loads(lines[-1].removeprefix("RESULT "))
    return logs, histories


def import_logs(server: LiveServer, logdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a process that reports whether TensorFlow got imported."""
    code = ("import sys; from sweeplab.cli import main; rc = main(sys.argv[1:]); "
            "print('TENSORFLOW', 'tensorflow' in sys.modules); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, "import-tensorboard", str(logdir), "--url", server.url,
                           "--no-progress", *args], cwd=PROJECT_ROOT, env=cli_env(server), capture_output=True,
                          text=True, timeout=120)


def sweep_named(api: httpx.Client, name: str) -> dict[str, Any]:
    found = [s for s in api.get("/api/sweeps").json() if s["name"] == name]
    assert len(found) == 1, found
    return found[0]


def check_runs(api: httpx.Client, sweep: dict[str, Any], expected: dict[str, dict[str, list[float]]]) -> None:
    """Each run's four curves are Keras' History, at epochs 1..N (Keras' step 0 is epoch 1)."""
    runs = api.get(f"/api/sweeps/{sweep['id']}/runs").json()
    assert len(runs) == len(expected) and all(r["status"] == "succeeded" for r in runs)
    got = {}
    for run in runs:
        series = api.get(f"/api/runs/{run['id']}/metrics").json()["series"]
        got[(json.dumps(run["config"], sort_keys=True), run["seed"])] = series
    for history in expected.values():
        matching = [s for s in got.values()
                    if s["loss"]["values"] == pytest.approx(history["loss"], rel=1e-6)]
        assert len(matching) == 1, history
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert matching[0][key]["epochs"] == [1, 2], key
            assert matching[0][key]["values"] == pytest.approx(history[key], rel=1e-6), key


def test_import_tensorboard(live_server: LiveServer, tb_logs: Logs) -> None:
    logs, histories = tb_logs
    api = httpx.Client(base_url=live_server.url, timeout=10)

    # A regex that misses a run directory posts nothing at all.
    missed = import_logs(live_server, logs / "plain", "--sweep", "tb", "--config-from-path", r"width=(?P<width>4)/")
    assert missed.returncode == 2 and "does not match" in missed.stderr and "width=8/seed=0" in missed.stderr
    assert api.get("/api/sweeps").json() == []

    # Without HParams: the config from the path; seed names the replicate; twice imports nothing twice.
    first = import_logs(live_server, logs / "plain", "--sweep", "tb", "--config-from-path", PATTERN)
    assert first.returncode == 0, first.stderr
    assert "3 runs imported (6 epochs)" in first.stdout and "TENSORFLOW False" in first.stdout
    second = import_logs(live_server, logs / "plain", "--sweep", "tb", "--config-from-path", PATTERN)
    assert second.returncode == 0 and "0 runs imported" in second.stdout and "3 already there" in second.stdout
    sweep = sweep_named(api, "tb")
    runs = api.get(f"/api/sweeps/{sweep['id']}/runs").json()
    assert sorted((r["config"]["width"], r["seed"]) for r in runs) == [(4, 0), (4, 1), (8, 0)]
    assert len({r["config_id"] for r in runs if r["config"] == {"width": 4}}) == 1  # replicates of one config
    check_runs(api, sweep, {k: v for k, v in histories.items() if k.startswith("plain/")})

    # With HParams: the config from them (numbers as numbers), their seed the replicate.
    hp = import_logs(live_server, logs / "hp", "--sweep", "tb-hp", "--study", "s")
    assert hp.returncode == 0, hp.stderr
    sweep = sweep_named(api, "tb-hp")
    assert sweep["study"] == "s"
    runs = api.get(f"/api/sweeps/{sweep['id']}/runs").json()
    assert [(r["config"], r["seed"]) for r in runs] == [({"optimizer": "adam", "width": 4}, 0),
                                                        ({"optimizer": "adam", "width": 4}, 1)]
    check_runs(api, sweep, {k: v for k, v in histories.items() if k.startswith("hp/")})


def test_an_interrupted_import_is_finished_not_duplicated(live_server: LiveServer, tb_logs: Logs,
                                                         tmp_path: Path) -> None:
    logs, histories = tb_logs
    api = httpx.Client(base_url=live_server.url, timeout=10)
    run_dir = RunDir((logs / "plain" / "width=4" / "seed=0"), "width=4/seed=0")
    # What an import killed after its first epoch left: the run, running, with epoch 1 only.
    left = api.post("/api/external/runs", json={"sweep": "tb", "config": {"width": 4}, "seed": 0, "epochs": 2,
                                                "client_token": client_token("tb", None, run_dir)}).json()
    api.post(f"/api/runs/{left['id']}/epochs", json={"epoch": 1, "metrics": {"loss": 9.0}}).raise_for_status()
    done = import_logs(live_server, logs / "plain", "--sweep", "tb", "--config-from-path", PATTERN)
    assert done.returncode == 0 and "2 runs imported" in done.stdout and "1 resumed" in done.stdout, done.stdout
    run = api.get(f"/api/runs/{left['id']}").json()
    assert run["status"] == "succeeded"
    series = api.get(f"/api/runs/{left['id']}/metrics").json()["series"]
    assert series["loss"] == {"epochs": [1, 2], "values": [9.0, pytest.approx(histories["plain/width=4/seed=0"]
                                                                                ["loss"][1], rel=1e-6)]}
    assert series["val_loss"]["epochs"] == [1, 2]
    assert len(api.get(f"/api/sweeps/{left['sweep_id']}/runs").json()) == 3
    missing = import_logs(live_server, tmp_path / "nowhere", "--sweep", "tb")
    assert missing.returncode == 2 and "no such directory" in missing.stderr
