"""Training programs (worker.programs): a worker runs a run of a program as a process of its own
and stores what the program reports through its channel (worker.channel), fenced by its lease.

Most programs here are tiny pure-Python ones that speak the channel protocol directly (fast); one
test trains real Keras with SweeplabCallback(checkpoint=True) and resumes it after a SIGKILL."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.services.queue import claim_runs
from app.services.runs import cancel_run
from tests.conftest import start_worker, wait_for
from tests.factories import events_of, get_run, make_sweep, metric_rows, runs_of
from worker.main import Worker

# Reports epochs 0..N through the channel with a checkpoint each: loss 1/(epoch + 1 + seed), val_accuracy
# epoch/N. params: sleep (seconds per epoch), hang_after (on its first attempt, hang after that
# epoch), exit (fail with that status after 30 lines of stderr), ignore_term, checkpoint (default true),
# chatty (a line of stdout per epoch).
FAKE = textwrap.dedent('''
    import json, os, signal, sys, time
    from worker.channel import CHANNEL_ENV, ChannelClient, decode_blob, encode_blob

    cfg = json.loads(os.environ["SWEEPLAB_RUN_CONFIG"])
    p = cfg.get("params") or {}
    seed, epochs = int(os.environ["SWEEPLAB_RUN_SEED"]), int(os.environ["SWEEPLAB_RUN_EPOCHS"])
    print(f"program pid {os.getpid()} seed {seed} epochs {epochs} units {p.get('units')} "
          f"lr {cfg['optimizer']['learning_rate']}", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    if p.get("pidfile"):
        with open(p["pidfile"], "a") as f:
            f.write(f"{os.getpid()}\\n")
    if p.get("ignore_term"):
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM; carrying on", flush=True))
    if p.get("exit"):
        for i in range(30):
            print(f"noise line {i}", file=sys.stderr)
        print("boom: this program cannot train", file=sys.stderr)
        sys.exit(p["exit"])
    channel = ChannelClient(os.environ[CHANNEL_ENV])
    bound = channel.call("bind", checkpoint=p.get("checkpoint", True))
    start = 0
    if bound["resume"]:
        state = json.loads(decode_blob(bound["resume"]["state"]))
        assert state["epoch"] == bound["resume"]["epoch"], state
        start = state["epoch"] + 1
        print(f"resumed after epoch {state['epoch']}", flush=True)
    for epoch in range(start, epochs + 1):
        if epoch:
            time.sleep(p.get("sleep", 0.05))
        metrics = {"loss": 1 / (epoch + 1 + seed), "val_accuracy": epoch / epochs}
        answer = channel.call("epoch", epoch=epoch, metrics=metrics, seconds=0.01,
                              state=encode_blob(json.dumps({"epoch": epoch}).encode()))
        if p.get("chatty"):
            print(f"finished epoch {epoch}", flush=True)
        if answer["stop"]:
            print("told to stop", flush=True)
            break
        if epoch == p.get("hang_after") and bound["attempt"] == 1:
            while True:
                time.sleep(0.1)
''')


def loss_of(seed: int, epoch: int) -> float:
    return 1 / (epoch + 1 + seed)


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    folder = tmp_path / "programs"
    folder.mkdir()
    (folder / "fake.py").write_text(FAKE)
    return folder


@pytest.fixture
def psettings(settings: Settings, programs: Path) -> Settings:
    return settings.model_copy(update={"programs_dir": programs, "program_kill_grace_seconds": 0.5})


def program_sweep(engine: Engine, epochs: int = 3, replicates: int = 1, **params: Any) -> int:
    return make_sweep(engine, program="fake", epochs=epochs, replicates=replicates, params=params).id


class BackgroundWorker:
    """A worker's loop in a thread (it keeps claiming until stopped)."""

    def __init__(self, settings: Settings, engine: Engine):
        self.worker = Worker(settings, engine)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *_: object) -> None:
        self.worker.shutdown.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def stored_epochs(engine: Engine, run_id: int, key: str = "loss") -> list[int]:
    return [e for k, e, _ in metric_rows(engine, run_id) if k == key]


def alive(pid: int) -> bool:
    """Running (a zombie left to a parent that never reaps it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_program_trains_its_epochs_through_the_worker(psettings: Settings, engine: Engine) -> None:
    sweep_id = program_sweep(engine, epochs=3, replicates=2, units=16)
    assert Worker(psettings, engine).run(once=True) == 2  # one run per claim
    for run in runs_of(engine, sweep_id):
        assert run.status == "succeeded" and run.attempt == 1 and run.program == "fake" and run.error is None
        rows = metric_rows(engine, run.id)
        assert [(e, v) for k, e, v in rows if k == "loss"] == [(e, pytest.approx(loss_of(run.seed, e)))
                                                                for e in range(4)]
        assert [e for k, e, _ in rows if k == "epoch_seconds"] == [0, 1, 2, 3]
        assert get_run(engine, run.id).last_epoch == 3
        output = run.output or ""
        # The run's config, seed and epochs reached it; stdout and stderr are both kept.
        assert f"seed {run.seed} epochs 3 units 16 lr 0.001" in output and "a line on stderr" in output
        assert "[sweeplab worker] exit status 0" in output
        assert events_of(engine, run.id) == ["claimed", "succeeded"]
        provenance = run.provenance or {}
        assert provenance["program"] == "fake" and provenance["trainer"] == "program" and provenance["seed"] == run.seed
        assert provenance["program_sha256"] == hashlib.sha256(FAKE.encode()).hexdigest()


def test_a_program_that_exits_non_zero_fails_with_its_stderr_tail(psettings: Settings, engine: Engine) -> None:
    sweep_id = program_sweep(engine, exit=3)
    Worker(psettings, engine).run(once=True)
    (run,) = runs_of(engine, sweep_id)
    assert run.status == "failed" and run.attempt == 1  # its own verdict: not retried
    error = run.error or ""
    assert error.startswith("program 'fake' exited with status 3: ")
    assert error.endswith("boom: this program cannot train")
    assert "noise line 29" in error and "noise line 10" not in error  # the last 20 lines of stderr only
    assert "a line on stderr" in (run.output or "") and "noise line 0" in (run.output or "")


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_program_killed_mid_run_is_requeued_and_resumed(psettings: Settings, engine: Engine, tmp_path: Path,
                                                          checkpoint: bool) -> None:
    """SIGKILL to the program after epoch 2: requeued (attempt counted), claimed again, and resumed from
    the checkpoint of epoch 2; a program that keeps no checkpoint starts over from epoch 0 instead.
    Either way every epoch is stored once, with the values of one uninterrupted training."""
    pidfile = tmp_path / "pids"
    sweep_id = program_sweep(engine, epochs=4, hang_after=2, pidfile=str(pidfile), checkpoint=checkpoint)
    (run,) = runs_of(engine, sweep_id)
    with BackgroundWorker(psettings, engine):
        wait_for(lambda: stored_epochs(engine, run.id) == [0, 1, 2], 20, message="epochs 0-2")
        first = int(pidfile.read_text().split()[0])
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: get_run(engine, run.id).status == "succeeded", 20, message="the resumed run")
    done = get_run(engine, run.id)
    assert done.attempt == 2 and not alive(first)
    assert [(e, v) for k, e, v in metric_rows(engine, run.id) if k == "loss"] == [
        (e, pytest.approx(loss_of(run.seed, e))) for e in range(5)]
    events = events_of(engine, run.id)
    assert events[:3] == ["claimed", "requeued", "resumed"] and events[-1] == "succeeded"
    if checkpoint:
        assert "resumed after epoch 2" in (done.output or "") and "restarted" not in events
    else:
        assert "restarted" in events and "starting over from epoch 0" in (done.output or "")


def test_a_cancelled_program_gets_sigterm_then_sigkill(psettings: Settings, engine: Engine) -> None:
    sweep_id = program_sweep(engine, epochs=5, hang_after=1, ignore_term=True)
    (run,) = runs_of(engine, sweep_id)
    with BackgroundWorker(psettings, engine):
        wait_for(lambda: stored_epochs(engine, run.id) == [0, 1], 20, message="epochs 0-1")
        t0 = time.monotonic()
        cancel_run(engine, run.id)
        wait_for(lambda: get_run(engine, run.id).status == "cancelled", 10, message="cancelled")
        took = time.monotonic() - t0
    done = get_run(engine, run.id)
    output = done.output or ""
    # SIGTERM came (the program ignored it), then SIGKILL after the 0.5 s grace; the epochs it finished stay.
    assert "stopping the program: cancelled" in output and "got SIGTERM; carrying on" in output
    assert "no exit 0.5 s after SIGTERM: SIGKILL" in output and "killed by SIGKILL" in output
    assert stored_epochs(engine, run.id) == [0, 1] and 0.5 <= took < 8
    assert events_of(engine, run.id)[-1] == "cancelled"


def test_a_program_told_to_stop_through_its_channel_ends_cancelled(psettings: Settings, engine: Engine) -> None:
    """A cancel seen at an epoch's write: the answer says stop, the program stops by itself (exit 0)."""
    sweep_id = program_sweep(engine, epochs=30, sleep=0.2)
    (run,) = runs_of(engine, sweep_id)
    with BackgroundWorker(psettings, engine):
        wait_for(lambda: len(stored_epochs(engine, run.id)) >= 2, 20, message="two epochs")
        cancel_run(engine, run.id)
        wait_for(lambda: get_run(engine, run.id).status == "cancelled", 10, message="cancelled")
    epochs = stored_epochs(engine, run.id)
    assert epochs == list(range(len(epochs))) and len(epochs) < 31


def test_a_worker_without_the_program_never_claims_its_runs(psettings: Settings, engine: Engine,
                                                             tmp_path: Path) -> None:
    prog = program_sweep(engine, replicates=2)
    plain = make_sweep(engine, epochs=1).id  # queued after the program's runs
    other = tmp_path / "other-programs"
    other.mkdir()
    (other / "something_else.py").write_text("print('not it')\n")
    assert claim_runs(engine, "w", 4, 5.0, programs=["something_else"])[0].sweep_id == plain
    assert claim_runs(engine, "w", 4, 5.0) == []  # no program offered: program runs are not its
    for folder in (None, other):
        without = psettings.model_copy(update={"programs_dir": folder})
        assert Worker(without, engine).run(once=True) == 0
    assert {r.status for r in runs_of(engine, prog)} == {"queued"}
    # A worker offering it claims them, one per claim, each in a process of its own.
    (claim,) = claim_runs(engine, "w2", 4, 5.0, programs=["fake"])
    assert claim.sweep_id == prog and claim.train["program"] == "fake"


def test_a_program_removed_from_the_folder_goes_back_to_the_queue(psettings: Settings, engine: Engine,
                                                                   programs: Path) -> None:
    sweep_id = program_sweep(engine)
    worker = Worker(psettings, engine)
    (programs / "fake.py").unlink()  # the worker still lists it until its next rescan
    assert worker.step()  # claimed, found gone, given back
    (run,) = runs_of(engine, sweep_id)
    assert run.status == "queued" and run.attempt == 0 and worker.catalog.names() == []


def test_a_worker_killed_mid_program_takes_the_program_with_it(psettings: Settings, engine: Engine,
                                                                tmp_path: Path) -> None:
    """SIGKILL to the worker process: its program dies with it (PR_SET_PDEATHSIG), the lease expires,
    and another worker resumes the run from its checkpoint."""
    pidfile = tmp_path / "pids"
    sweep_id = program_sweep(engine, epochs=3, hang_after=1, pidfile=str(pidfile))
    (run,) = runs_of(engine, sweep_id)
    proc = start_worker(psettings, tmp_path / "worker.log")
    try:
        wait_for(lambda: stored_epochs(engine, run.id) == [0, 1], 30, message="epochs 0-1")
        program = int(pidfile.read_text().split()[0])
        proc.kill()
        proc.wait()
        wait_for(lambda: not alive(program), 5, message="the program to die with its worker")
    finally:
        if proc.poll() is None:
            proc.kill()
    with BackgroundWorker(psettings, engine):
        wait_for(lambda: get_run(engine, run.id).status == "succeeded", 30, message="the resumed run")
    assert stored_epochs(engine, run.id) == [0, 1, 2, 3]
    assert "resumed after epoch 1" in (get_run(engine, run.id).output or "")


def test_program_names_in_specs(psettings: Settings, engine: Engine) -> None:
    with TestClient(create_app(psettings), raise_server_exceptions=False) as api:
        base = {"name": "p", "dataset": "mnist", "epochs": 2, "params": {"units": 8}}
        for bad in ("../fake", "fake.py", "/bin/sh", "a b", "fake;rm -rf", "x" * 101, "", "-x", "fake\n"):
            r = api.post("/api/sweeps", json={**base, "program": bad})
            assert r.status_code == 422, (bad, r.text)
            assert [f["loc"] for f in r.json()["error"]["fields"]] == ["program"], bad
        r = api.post("/api/sweeps", json={**base, "program": "fake", "grid": {"params.units": [8, 16]}})
        assert r.status_code == 201, r.text
        runs = api.get(f"/api/sweeps/{r.json()['id']}/runs").json()
        assert [x["program"] for x in runs] == ["fake", "fake"]
        assert sorted(x["config"]["params"]["units"] for x in runs) == [8, 16]
        assert all(x["output"] is None for x in runs)  # a run's output only in GET /api/runs/{id}


def test_the_run_api_and_page_show_a_programs_output(psettings: Settings, engine: Engine) -> None:
    sweep_id = program_sweep(engine, exit=2)
    Worker(psettings, engine).run(once=True)
    (run,) = runs_of(engine, sweep_id)
    with TestClient(create_app(psettings), raise_server_exceptions=False) as api:
        body = api.get(f"/api/runs/{run.id}").json()
        assert body["program"] == "fake" and "boom: this program cannot train" in body["output"]
        page = api.get(f"/runs/{run.id}").text
        assert 'id="run-output"' in page and "noise line 0" in page


@pytest.mark.slow
def test_a_keras_program_with_the_callback_resumes_from_its_checkpoint(
        psettings: Settings, engine: Engine, tmp_path: Path, data_dir: Path) -> None:
    """Real Keras: SweeplabCallback(checkpoint=True) inside a program; the program kills itself (SIGKILL)
    after epoch 2 on its first attempt. The next attempt restores the weights and optimizer: the restored
    model's validation loss equals the stored epoch-2 val_loss, and its optimizer's step count is two
    epochs' worth."""
    (tmp_path / "programs" / "keras_fit.py").write_text(textwrap.dedent(f'''
        import json, os, signal, numpy as np, keras
        from sweeplab import SweeplabCallback
        cfg = json.loads(os.environ["SWEEPLAB_RUN_CONFIG"])
        seed, epochs = int(os.environ["SWEEPLAB_RUN_SEED"]), int(os.environ["SWEEPLAB_RUN_EPOCHS"])
        d = np.load({str(data_dir / "mnist.npz")!r})
        x, y, xv, yv = d["x_train"][:256] / 255.0, d["y_train"][:256], d["x_test"][:64] / 255.0, d["y_test"][:64]
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(cfg["params"]["units"], activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        marker = {str(tmp_path / "killed")!r}

        class AfterRestore(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if os.path.exists(marker):
                    loss = self.model.evaluate(xv, yv, verbose=0, return_dict=True)["loss"]
                    print(json.dumps({{"restored_val_loss": loss, "steps": int(self.model.optimizer.iterations)}}),
                          flush=True)

            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == 2 and not os.path.exists(marker):
                    open(marker, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)

        m.fit(x, y, epochs=epochs, batch_size=32, validation_data=(xv, yv), verbose=0,
              callbacks=[SweeplabCallback(validation_data=(xv, yv), checkpoint=True), AfterRestore()])
    '''))
    sweep_id = make_sweep(engine, program="keras_fit", epochs=3, params={"units": 8}).id
    (run,) = runs_of(engine, sweep_id)
    with BackgroundWorker(psettings, engine):
        wait_for(lambda: get_run(engine, run.id).status in ("succeeded", "failed"), 120, message="the Keras run")
    done = get_run(engine, run.id)
    assert done.status == "succeeded", (done.error, done.output)
    assert done.attempt == 2 and events_of(engine, run.id)[:3] == ["claimed", "requeued", "resumed"]
    rows = metric_rows(engine, run.id)
    for key in ("val_loss", "val_accuracy"):
        assert [e for k, e, _ in rows if k == key] == [0, 1, 2, 3]
    assert [e for k, e, _ in rows if k == "loss"] == [1, 2, 3]
    restored = json.loads(next(line for line in (done.output or "").splitlines() if "restored_val_loss" in line))
    val_loss_2 = next(v for k, e, v in rows if k == "val_loss" and e == 2)
    assert restored["restored_val_loss"] == pytest.approx(val_loss_2, rel=1e-4)
    assert restored["steps"] == 2 * math.ceil(256 / 32)
