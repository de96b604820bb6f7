"""The worker loop in-process: claim, train (fake trainer), record every epoch, finish, fail, cancel."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from app.config import Settings
from app.services.queue import claim_runs, record_epoch
from app.services.runs import cancel_run, read_artifact
from tests.conftest import wait_for
from tests.factories import events_of, get_run, make_sweep, metric_rows, runs_of
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
