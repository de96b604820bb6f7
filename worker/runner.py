"""Train one claimed pack (runs of one config at the same epoch) and record it epoch by epoch.

Every write is fenced by the pack's lease token; a run whose write is refused (lease lost) is
dropped at once and nothing more is written for it. A heartbeat thread renews the leases while
the main thread trains, and raises the stop flag when every run of the pack is lost or cancelled
or the worker is shutting down.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from app.config import Settings
from app.datasets import DatasetUnavailable, load
from app.models import RunStatus
from app.services.queue import (
    Claim,
    WriteOutcome,
    finish_run,
    heartbeat,
    load_checkpoint,
    record_epoch,
    release_run,
)
from app.spec import TrainSpec
from worker.checkpoint import dump_state, load_state
from worker.trainer import PreparedData, State, Trainer, TrainerFactory

log = logging.getLogger("sweeplab.worker")
OUTPUT_IMAGES = 10
_prepared: dict[tuple[str, int | None, int | None], PreparedData] = {}


class Heartbeat(threading.Thread):
    """Renews the pack's leases every heartbeat_seconds; notes lost and cancelled runs."""

    def __init__(self, engine: Engine, settings: Settings, claims: dict[int, Claim], active: set[int],
                 shutdown: threading.Event):
        super().__init__(daemon=True, name="heartbeat")
        self.engine, self.settings, self.claims, self.shutdown = engine, settings, claims, shutdown
        self.active = active  # shared with the runner: the runs still being trained
        self.lost: set[int] = set()
        self.cancelled: set[int] = set()
        self.finished = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.finished.wait(self.settings.heartbeat_seconds):
            with self.lock:
                live = [self.claims[i] for i in sorted(self.active) if i not in self.lost]
            try:
                states = heartbeat(self.engine, live, self.settings.lease_seconds)
            except Exception:  # the database may be briefly away; the lease has slack
                log.warning("heartbeat failed; retrying", exc_info=True)
                continue
            with self.lock:
                self.lost |= {run_id for run_id, st in states.items() if not st.held}
                self.cancelled |= {run_id for run_id, st in states.items() if st.cancel_requested}

    def should_stop(self) -> bool:
        if self.shutdown.is_set():
            return True
        with self.lock:
            return all(i in self.lost or i in self.cancelled for i in list(self.active))


def prepared_data(spec: TrainSpec, settings: Settings) -> PreparedData:
    limit = spec.limit
    key = (spec.dataset, limit.train if limit else None, limit.test if limit else None)
    if key not in _prepared:
        images = load(spec.dataset, settings.data_dir)
        if limit:
            images = images.limited(limit.train, limit.test)
        _prepared[key] = PreparedData.from_images(images)
    return _prepared[key]


def _json(obj: object) -> tuple[str, bytes]:
    return "application/json", json.dumps(obj).encode()


def _outputs(trainer: Trainer, i: int, data: PreparedData) -> tuple[str, bytes]:
    x = data.x_test[:OUTPUT_IMAGES]
    out = trainer.predict(i, x)
    return _json({"indices": list(range(len(x))), "labels": data.y_test[: len(x)].tolist(),
                  "outputs": np.asarray(out, dtype=float).round(6).tolist()})


def _confusion(trainer: Trainer, i: int, data: PreparedData) -> tuple[str, bytes]:
    predicted = np.asarray(trainer.predict(i, data.x_test)).argmax(axis=1)
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (data.y_test, predicted), 1)
    return _json({"rows": "true label", "columns": "predicted label", "matrix": matrix.tolist()})


def readable_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or "ResourceExhausted" in name or "OOM" in text:
        return f"out of memory while training ({name}): {text} — try a smaller pack size or model"
    if isinstance(exc, DatasetUnavailable):
        return text
    return f"training failed: {name}: {text}"


class PackRunner:
    """Runs one pack to the end: trains, records, finishes, releases or drops each run."""

    def __init__(self, engine: Engine, settings: Settings, claims: list[Claim], factory: TrainerFactory,
                 shutdown: threading.Event):
        self.engine, self.settings, self.factory, self.shutdown = engine, settings, factory, shutdown
        self.claims = {c.run_id: c for c in claims}
        self.index = {c.run_id: i for i, c in enumerate(claims)}  # run id -> replicate index
        self.active: set[int] = set(self.claims)
        self.done_epoch = {c.run_id: c.last_epoch for c in claims}  # last epoch recorded per run
        self.beat = Heartbeat(engine, settings, self.claims, self.active, shutdown)

    def run(self) -> None:
        self.beat.start()
        try:
            self._train()
        except Exception as exc:
            log.exception("pack of runs %s failed", sorted(self.active))
            for run_id in sorted(self.active):
                finish_run(self.engine, self.claims[run_id], RunStatus.FAILED, readable_error(exc))
        finally:
            self.beat.finished.set()

    def _drop(self, trainer: Trainer | None, run_id: int) -> None:
        with self.beat.lock:
            self.active.discard(run_id)
        if trainer is not None and run_id in self.index:
            trainer.drop(self.index[run_id])

    def _train(self) -> None:
        first = next(iter(self.claims.values()))
        spec = TrainSpec.model_validate(first.train)
        data = self._data(spec)
        states: list[State | None] = []
        for run_id in self.claims:
            found = load_checkpoint(self.engine, run_id)
            states.append(load_state(found[1]) if found else None)
        start = first.last_epoch + 1
        if start > 0 and any(s is None for s in states):
            raise RuntimeError(f"no checkpoint to resume epoch {start} from")
        trainer = self.factory(spec, [c.seed for c in self.claims.values()], data, states)
        if start == 0:
            start = 1
            metrics = trainer.evaluate()
            for run_id in sorted(self.active):
                i = self.index[run_id]
                extra = {"outputs_before": _outputs(trainer, i, data)}
                self._record(trainer, run_id, 0, metrics[i], 0.0, extra)
        for epoch in range(start, spec.epochs + 1):
            if not self.active:
                return
            if self.shutdown.is_set():
                break
            t0 = time.perf_counter()
            results = trainer.train_epoch(epoch, self.beat.should_stop)
            seconds = time.perf_counter() - t0
            if results is None:
                break
            for run_id in sorted(self.active):
                self._record(trainer, run_id, epoch, results[self.index[run_id]], seconds)
        self._settle(trainer, data, spec)

    def _data(self, spec: TrainSpec) -> PreparedData:
        if self.settings.trainer == "fake":
            zeros = np.zeros((OUTPUT_IMAGES, 28, 28), dtype=np.float32)
            labels = np.arange(OUTPUT_IMAGES) % 10
            return PreparedData(zeros, labels, zeros, labels)
        return prepared_data(spec, self.settings)

    def _record(self, trainer: Trainer, run_id: int, epoch: int, metrics: dict[str, float], seconds: float,
                artifacts: dict[str, tuple[str, bytes]] | None = None) -> None:
        claim = self.claims[run_id]
        values = {**metrics, "epoch_seconds": seconds}
        state = dump_state(trainer.state(self.index[run_id]))
        outcome = record_epoch(self.engine, claim, epoch, values, state, self.settings.lease_seconds,
                               seconds, artifacts)
        if outcome is not WriteOutcome.LOST:
            self.done_epoch[run_id] = epoch
        log.info("run %d epoch %d/%d %s %.2fs", run_id, epoch, claim.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), seconds)
        if outcome is WriteOutcome.LOST:
            log.warning("run %d: lease lost at epoch %d; dropping it", run_id, epoch)
            self._drop(trainer, run_id)
        elif outcome is WriteOutcome.CANCEL_REQUESTED:
            finish_run(self.engine, claim, RunStatus.CANCELLED, None)
            log.info("run %d cancelled after epoch %d", run_id, epoch)
            self._drop(trainer, run_id)
        elif not math.isfinite(metrics.get("loss", 0.0)):
            finish_run(self.engine, claim, RunStatus.FAILED,
                       f"training diverged: the loss is {metrics['loss']} at epoch {epoch} "
                       f"(a lower learning rate usually helps)")
            self._drop(trainer, run_id)

    def _settle(self, trainer: Trainer, data: PreparedData, spec: TrainSpec) -> None:
        """After the loop: finish what completed, cancel what was asked, release the rest."""
        for run_id in sorted(self.active):
            claim = self.claims[run_id]
            if run_id in self.beat.lost:
                log.warning("run %d: lease lost (heartbeat refused); dropping it", run_id)
                continue
            if run_id in self.beat.cancelled:
                finish_run(self.engine, claim, RunStatus.CANCELLED, None)
            elif self.shutdown.is_set() and not self._completed(run_id, spec):
                release_run(self.engine, claim)
            else:
                finish_run(self.engine, claim, RunStatus.SUCCEEDED, None, self._final_artifacts(trainer, run_id, data))

    def _completed(self, run_id: int, spec: TrainSpec) -> bool:
        return self.done_epoch[run_id] >= spec.epochs

    def _final_artifacts(self, trainer: Trainer, run_id: int, data: PreparedData) -> dict[str, tuple[str, bytes]]:
        i = self.index[run_id]
        folder = Path(self.settings.artifacts_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"run-{run_id}.keras"
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".keras", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        trainer.save_keras(i, str(tmp_path))
        tmp_path.replace(path)
        return {
            "confusion_matrix": _confusion(trainer, i, data),
            "outputs_after": _outputs(trainer, i, data),
            "model.keras": ("application/octet-stream", path.read_bytes()),
        }
