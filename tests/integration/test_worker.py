"""The worker loop in-process: claim, train (fake trainer), record every epoch, finish, fail, cancel."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, update

from app.config import Settings
from app.db import write_session
from app.errors import NotFound
from app.models import Run
from app.services.queue import claim_runs, reap_expired, record_epoch
from app.services.runs import cancel_run, read_artifact
from tests.conftest import wait_for
from tests.factories import events_of, get_run, make_sweep, metric_rows, runs_of
from worker.fake_trainer import FakeTrainer
from worker.main import Worker


def test_worker_trains_a_sweep_to_the_end(settings: Settings, engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=3, epochs=3, grid={"model.hidden": [[4], [8]]})
    packs = Worker(settings, engine).run(once=True)
    assert packs == 2  # one pack per config (pack size 4 >= 3 replicates)
    for run in runs_of(engine, sweep.id):
        assert run.status == "succeeded" and run.attempt == 1 and run.last_epoch == 3
        rows = metric_rows(engine, run.id)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            assert [e for k, e, _ in rows if k == key] == [0, 1, 2, 3]
        names = {"confusion_matrix", "outputs_before", "outputs_after", "model.keras"}
        for name in names:
            assert read_artifact(engine, run.id, name)[1]
        matrix = json.loads(read_artifact(engine, run.id, "confusion_matrix")[1])["matrix"]
        assert len(matrix) == 10 and sum(map(sum, matrix)) == 10  # the fake data's 10 test images
        assert (Path(settings.artifacts_dir) / f"run-{run.id}.keras").is_file()


def test_a_resumed_run_continues_from_its_checkpoint(settings: Settings, engine: Engine) -> None:
    """Epochs 0-1 recorded by a worker that then died; another worker finishes 2-4 from the checkpoint."""
    import numpy as np

    from worker.checkpoint import dump_state

    make_sweep(engine, epochs=4)
    (claim,) = claim_runs(engine, "dead", 1, 0.01)
    for epoch in (0, 1):
        record_epoch(engine, claim, epoch, {"loss": 1.0 / (epoch + 1)}, dump_state({"epochs_done": np.array(epoch)}),
                     0.01)
    time.sleep(0.05)
    Worker(settings.model_copy(update={"reap_seconds": 0.0}), engine).run(once=True)
    run = get_run(engine, claim.run_id)
    assert run.status == "succeeded" and run.attempt == 2
    assert [e for k, e, _ in metric_rows(engine, run.id) if k == "loss"] == [0, 1, 2, 3, 4]
    assert [e for k, e, _ in metric_rows(engine, run.id) if k == "val_loss"] == [2, 3, 4]  # only the new epochs
    assert events_of(engine, run.id)[:3] == ["claimed", "requeued", "resumed"]


def test_a_diverging_run_fails_with_a_readable_error_and_the_worker_goes_on(
        settings: Settings, engine: Engine, monkeypatch: object) -> None:
    import worker.fake_trainer as fake

    original = fake.FakeTrainer._metrics

    def nan_for_seed_1(self: fake.FakeTrainer, i: int) -> dict[str, float]:
        m = original(self, i)
        if self.seeds[i] == 1 and self.done[i] >= 2:
            m["loss"] = float("nan")
        return m

    monkeypatch.setattr(fake.FakeTrainer, "_metrics", nan_for_seed_1)  # type: ignore[attr-defined]
    sweep = make_sweep(engine, replicates=3, epochs=4)
    Worker(settings, engine).run(once=True)
    by_seed = {r.seed: r for r in runs_of(engine, sweep.id)}
    assert by_seed[1].status == "failed" and "loss is nan at epoch 2" in (by_seed[1].error or "")
    assert [e for k, e, v in metric_rows(engine, by_seed[1].id) if k == "loss"] == [0, 1, 2]
    assert by_seed[0].status == by_seed[2].status == "succeeded"


def test_missing_data_fails_the_run_readably(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    sweep = make_sweep(engine, dataset="fashion_mnist", replicates=1)
    keras_settings = settings.model_copy(update={"trainer": "keras", "data_dir": tmp_path / "empty"})
    import app.datasets as datasets

    def offline(name: str, data_dir: Path) -> datasets.ImageData:
        raise datasets.DatasetUnavailable(f"dataset {name!r} not found: no {data_dir}/{name}.npz (offline)")

    original = datasets._download_with_keras
    datasets._download_with_keras = offline  # type: ignore[assignment]
    try:
        Worker(keras_settings, engine).run(once=True)
    finally:
        datasets._download_with_keras = original  # type: ignore[assignment]
    (run,) = runs_of(engine, sweep.id)
    if datasets.locate("fashion_mnist", tmp_path / "empty") is None:
        assert run.status == "failed" and "fashion_mnist" in (run.error or "") and "Traceback" not in (run.error or "")
    else:  # Debian's dataset-fashion-mnist is installed: the run trains from its IDX files
        assert run.status == "succeeded"


def test_cancel_stops_a_running_run_within_an_epoch(settings: Settings, engine: Engine, monkeypatch: object) -> None:
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.5")  # type: ignore[attr-defined]
    sweep = make_sweep(engine, replicates=2, epochs=50)
    worker = Worker(settings.model_copy(update={"heartbeat_seconds": 0.2}), engine)
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    thread.start()
    first, second = runs_of(engine, sweep.id)
    wait_for(lambda: get_run(engine, first.id).last_epoch >= 1, 20, message="epoch 1")
    cancel_run(engine, first.id)
    wait_for(lambda: get_run(engine, first.id).status == "cancelled", 5, message="cancel")
    assert get_run(engine, second.id).status == "running"  # the other replicate of the pack goes on
    cancel_run(engine, second.id)
    thread.join(10)
    assert not thread.is_alive()
    for run in (first, second):
        done = get_run(engine, run.id)
        assert done.status == "cancelled"
        epochs = [e for k, e, _ in metric_rows(engine, run.id) if k == "loss"]
        assert epochs == list(range(len(epochs))) and len(epochs) < 50


def test_shutdown_releases_the_runs(settings: Settings, engine: Engine, monkeypatch: object) -> None:
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.3")  # type: ignore[attr-defined]
    sweep = make_sweep(engine, replicates=2, epochs=50)
    worker = Worker(settings, engine)
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for(lambda: all(r.last_epoch >= 1 for r in runs_of(engine, sweep.id)), 20, message="epoch 1")
    worker.shutdown.set()
    thread.join(10)
    for run in runs_of(engine, sweep.id):
        assert run.status == "queued" and run.lease_token is None and run.attempt == 0
        assert events_of(engine, run.id)[-1] == "released"


def _steal(engine: Engine, run_id: int) -> None:
    """Another worker takes the run over: its lease expires, the reaper requeues it, a thief claims it."""
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=Run.lease_expires_at - 3600))
    assert reap_expired(engine).requeued == [run_id]
    assert [c.run_id for c in claim_runs(engine, "thief", 1, 30.0)] == [run_id]


class _LosesItsRun(FakeTrainer):
    """A fake trainer whose run another worker takes over at one moment of its end: while the final
    artifacts are computed ("predict"), or while the model is saved ("save"); or whose save fails."""

    engine: Engine
    run_id: int
    moment: str
    stolen = False

    def predict(self, replicate: int, x: Any) -> Any:
        if self.moment == "predict" and self.done.get(replicate) == 2 and not self.stolen:
            _steal(self.engine, self.run_id)
            self.stolen = True
        return super().predict(replicate, x)

    def save_keras(self, replicate: int, path: str) -> None:
        super().save_keras(replicate, path)
        if self.moment == "save":
            _steal(self.engine, self.run_id)
        elif self.moment == "fail":
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize("moment", ["predict", "save", "fail"])
def test_a_worker_that_lost_its_run_leaves_no_model_file(moment: str, settings: Settings, engine: Engine) -> None:
    """Lost before the save: no file is written. Lost during the save: the finish is refused and the
    file removed. A failed save: no temp file is left behind."""
    sweep = make_sweep(engine, replicates=1, epochs=2)
    (run,) = runs_of(engine, sweep.id)
    trainer = type("Trainer", (_LosesItsRun,), {"engine": engine, "moment": moment, "run_id": run.id})
    Worker(settings, engine, factory=trainer).run(once=True)
    folder = Path(settings.artifacts_dir)
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []
    done = get_run(engine, run.id)
    if moment == "fail":
        assert done.status == "failed" and "No space left" in (done.error or "")
    else:
        assert done.status == "running" and done.worker_id == "thief"
    with pytest.raises(NotFound):
        read_artifact(engine, run.id, "model.keras")


def test_the_workers_reaper_runs_while_a_pack_trains(settings: Settings, engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead worker's run goes back to the queue within a lease and a reap, not when a pack ends."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.2")
    make_sweep(engine, replicates=1, epochs=1)
    (dead,) = claim_runs(engine, "dead", 1, 0.5)  # its worker dies at once
    long = make_sweep(engine, replicates=1, epochs=50)
    worker = Worker(settings, engine)  # reap_seconds 1
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: get_run(engine, dead.run_id).status == "queued", 5, 0.05, "the dead worker's run requeued")
        (busy,) = runs_of(engine, long.id)
        assert busy.status == "running" and busy.worker_id == worker.worker_id and busy.last_epoch < 50
    finally:
        worker.shutdown.set()
        thread.join(10)


def test_the_heartbeat_must_be_well_below_the_lease(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="at most a third of lease_seconds"):
        Settings(lease_seconds=10, heartbeat_seconds=5)
    assert Settings(lease_seconds=9, heartbeat_seconds=3).heartbeat_seconds == 3


def test_shutdown_with_a_pending_cancel_ends_the_run_cancelled(settings: Settings, engine: Engine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel the heartbeat has not seen yet when SIGTERM comes: the run ends cancelled at once
    instead of going back to the queue to train one more epoch."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.5")
    sweep = make_sweep(engine, replicates=2, epochs=50)
    worker = Worker(settings.model_copy(update={"heartbeat_seconds": 1.6}), engine)
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for(lambda: all(r.last_epoch >= 1 for r in runs_of(engine, sweep.id)), 20, 0.02, "epoch 1")
    first, second = runs_of(engine, sweep.id)
    cancel_run(engine, first.id)
    worker.shutdown.set()
    thread.join(10)
    assert get_run(engine, first.id).status == "cancelled"
    assert events_of(engine, first.id)[-1] == "cancelled"
    assert get_run(engine, second.id).status == "queued"
