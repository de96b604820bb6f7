"""Train one claimed pack (runs at the same epoch whose configs differ at most in learning rate and
epochs: app/packing.py) and record it epoch by epoch. A run whose own epochs are done ends at once
and its replicate leaves the pack; the others go on.

Every write is fenced by the pack's lease token; a run whose write is refused (lease lost) is
dropped at once and nothing more is written for it. A heartbeat thread renews the leases while
the main thread trains, and raises the stop flag when every run of the pack is lost or cancelled
or the worker is shutting down.

Only an error of training itself fails a run. A database call is retried through transient
errors while the lease lasts (the queue's writes are idempotent); if the database stays away,
the pack stops and its runs go back to the queue (released, or their leases expire), never to
`failed`. Running out of memory takes the whole pack down, so it is treated as a crash is: each
run goes back with its attempt counted and trains alone next time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.datasets import DatasetUnavailable, load
from app.metrics import EPOCH_SECONDS, LOSS
from app.models import RunStatus
from app.packing import pack_key
from app.retry import DatabaseUnavailable, retry_transient
from app.services.pruning import after_epoch, lagging, pruning_sweeps
from app.services.queue import (
    Claim,
    WriteOutcome,
    finish_run,
    heartbeat,
    load_checkpoint,
    record_epoch,
    record_provenance,
    release_run,
    requeue_crashed,
)
from app.spec import TrainSpec
from worker.artifacts import (
    OUTPUT_IMAGES,
    Artifact,
    confusion,
    model_path,
    outputs,
    remove_model_file,
    write_model_file,
)
from worker.checkpoint import dump_state, load_state
from worker.heartbeat import Heartbeat, Lease
from worker.provenance import pack_provenance
from worker.trainer import ModelBuildError, PreparedData, State, Trainer, TrainerFactory

log = logging.getLogger("sweeplab.worker")
T = TypeVar("T")


class PhaseClock:
    """Seconds spent per phase of one pack (data, build, evaluate, train, record, settle...), logged
    in one line when the pack ends: where a pack's wall time goes, measured, not guessed."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def line(self) -> str:
        total = time.perf_counter() - self.started
        parts = " ".join(f"{k}={v:.2f}" for k, v in self.seconds.items())
        return f"{total:.2f}s: {parts} other={total - sum(self.seconds.values()):.2f}"
PRUNE_POLL_SECONDS = 0.25  # how often a pack of a pruning sweep looks whether the others reached its epoch
# (dataset, limits) -> (the loaded data it was prepared from, the prepared data): a changed file is reloaded.
_prepared: dict[tuple[str, int | None, int | None], tuple[object, PreparedData]] = {}


def prepared_data(spec: TrainSpec, settings: Settings) -> PreparedData:
    limit = spec.limit
    key = (spec.dataset, limit.train if limit else None, limit.test if limit else None)
    images = load(spec.dataset, settings.data_dir)  # cached by app.datasets until the file changes
    held = _prepared.get(key)
    if held is None or held[0] is not images:
        for old in [k for k, (source, _) in _prepared.items() if k[0] == spec.dataset and source is not images]:
            del _prepared[old]
        limited = images.limited(limit.train, limit.test) if limit else images
        _prepared[key] = held = (images, PreparedData.from_images(limited))
    return held[1]


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or TensorFlow's ResourceExhaustedError (known by name: no TF import here)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, MemoryError) or "ResourceExhaustedError" in names or "OOM when allocating" in str(exc)


def readable_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    if is_out_of_memory(exc) or "OOM" in text:
        return f"out of memory while training ({name}): {text} — try a smaller pack size or model"
    if isinstance(exc, (DatasetUnavailable, ModelBuildError)):
        return text
    return f"training failed: {name}: {text}"


class PackRunner:
    """Runs one pack to the end: trains, records, finishes, releases or drops each run."""

    def __init__(self, engine: Engine, settings: Settings, claims: list[Claim], factory: TrainerFactory,
                 shutdown: threading.Event, claimed_at: float | None = None):
        self.engine, self.settings, self.factory, self.shutdown = engine, settings, factory, shutdown
        self.claims = {c.run_id: c for c in claims}
        self.index = {c.run_id: i for i, c in enumerate(claims)}  # run id -> replicate index
        self.active: set[int] = set(self.claims)
        self.done_epoch = {c.run_id: c.last_epoch for c in claims}  # last epoch recorded per run
        self.lease = Lease(settings.lease_seconds, claimed_at)
        self.beat = Heartbeat(engine, settings, self.claims, self.active, shutdown, self.lease)
        self.pruning: set[int] | None = None  # the pack's sweeps that prune (app.services.pruning), read once
        self.clock = PhaseClock()

    def run(self) -> None:
        self.beat.start()  # before data loading and trainer building: the leases run from the claim
        try:
            self._train()
            log.info("pack of runs %s took %s", sorted(self.claims), self.clock.line())
        except DatabaseUnavailable as exc:
            log.warning("runs %s: %s; giving them back to the queue", sorted(self.active), exc)
            self._ending(self._give_back)
        except SQLAlchemyError:
            log.exception("runs %s: database error; stopping them (their leases will expire)", sorted(self.active))
        except Exception as exc:
            error = readable_error(exc)
            if is_out_of_memory(exc):
                log.warning("pack of runs %s ran out of memory; each goes back to the queue to train alone: %s",
                            sorted(self.active), error)
                self._ending(lambda: self._requeue(error))
            else:
                log.exception("pack of runs %s failed", sorted(self.active))
                self._ending(lambda: self._fail(error))
        finally:
            self.beat.finished.set()

    # ---- database calls: retried through transient errors while the lease lasts

    def _db(self, what: str, call: Callable[[], T]) -> T:
        return retry_transient(call, self.lease.retry_seconds(self.settings), what)

    def _ending(self, settle: Callable[[], None]) -> None:
        """Settle the pack after an error; if the database fails now, the leases will expire."""
        try:
            settle()
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("runs %s: could not settle them (%s); their leases will expire", sorted(self.active),
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _live(self) -> list[Claim]:
        return [self.claims[i] for i in sorted(self.active) if i not in self.beat.lost]

    def _give_back(self) -> None:
        """Release the runs, retried as long as the lease lasts: a release gives the attempt back, so
        database outages never use up a run's attempts. Past the lease the reaper requeues them."""
        for claim in self._live():
            retry_transient(partial(release_run, self.engine, claim, "database unavailable"),
                            self.lease.left(), f"release run {claim.run_id}")

    def _requeue(self, error: str) -> None:
        for claim in self._live():
            self._db(f"requeue run {claim.run_id}", partial(requeue_crashed, self.engine, claim, error))

    def _fail(self, error: str) -> None:
        for claim in self._live():
            self._db(f"fail run {claim.run_id}",
                     partial(finish_run, self.engine, claim, RunStatus.FAILED, error))

    def _finish(self, claim: Claim, status: RunStatus, error: str | None = None,
                artifacts: dict[str, Artifact] | None = None) -> bool:
        return self._db(f"finish run {claim.run_id}",
                        lambda: finish_run(self.engine, claim, status, error, artifacts))

    def _holds(self, claim: Claim) -> bool:
        """A fenced check (it renews the lease) that the run is still ours."""
        states = self._db(f"check lease of run {claim.run_id}", lambda: self.lease.renewing(
            lambda: heartbeat(self.engine, [claim], self.settings.lease_seconds)))
        return states[claim.run_id].held

    # ---- training

    def _drop(self, trainer: Trainer | None, run_id: int) -> None:
        with self.beat.lock:
            self.active.discard(run_id)
        if trainer is not None and run_id in self.index:
            trainer.drop(self.index[run_id])

    def _learning_rates(self, spec: TrainSpec) -> list[float] | None:
        """Each replicate's learning rate when the pack mixes rates, else None (the spec's for all)."""
        specs = [TrainSpec.model_validate(c.train) for c in self.claims.values()]
        if len({pack_key(s) for s in specs}) > 1:  # the claim never packs them: a bug, not the user's error
            raise RuntimeError(f"runs {sorted(self.claims)} of different pack keys were claimed as one pack")
        rates = [float(s.optimizer.learning_rate or 0) for s in specs]
        return rates if any(r != float(spec.optimizer.learning_rate or 0) for r in rates) else None

    def _train(self) -> None:
        clock, t = self.clock, time.perf_counter()
        first = next(iter(self.claims.values()))
        spec = TrainSpec.model_validate(first.train)  # the settings the pack shares; rates and epochs per run
        rates = self._learning_rates(spec)
        data = self._data(spec)
        t = clock.add("data", t)
        states: list[State | None] = []
        for run_id in self.claims:
            found = self._db(f"load checkpoint of run {run_id}", partial(load_checkpoint, self.engine, run_id))
            states.append(load_state(found[1]) if found else None)
        t = clock.add("checkpoints", t)
        start = first.last_epoch + 1
        if start > 0 and any(s is None for s in states):
            raise RuntimeError(f"no checkpoint to resume epoch {start} from")
        seeds = [c.seed for c in self.claims.values()]
        # Rates only when mixed: a factory of one rate (a test's) serves every pack of one config.
        trainer = (self.factory(spec, seeds, data, states) if rates is None
                   else self.factory(spec, seeds, data, states, learning_rates=rates))
        t = clock.add("build", t)
        self._record_provenance(trainer, spec)
        t = clock.add("provenance", t)
        if start == 0:
            start = 1
            metrics = trainer.evaluate()
            t = clock.add("evaluate0", t)
            for run_id in sorted(self.active):
                i = self.index[run_id]
                extra = {"outputs_before": outputs(trainer, i, data)}
                clock.add("outputs", t)
                self._record(trainer, run_id, 0, metrics[i], 0.0, extra)
                t = time.perf_counter()
        self._settle_done(trainer, data)
        for epoch in range(start, max(c.epochs for c in self.claims.values()) + 1):
            if not self.active:
                return
            if self.shutdown.is_set() or self.beat.should_stop():
                break
            t0 = time.perf_counter()
            results = trainer.train_epoch(epoch, self.beat.should_stop)
            seconds = time.perf_counter() - t0
            clock.add("train", t0)
            if results is None:
                break
            for run_id in sorted(self.active):
                self._record(trainer, run_id, epoch, results[self.index[run_id]], seconds)
            t = time.perf_counter()
            self._prune(trainer, epoch)
            clock.add("prune", t)
            self._settle_done(trainer, data)
        self._settle(trainer, data)

    def _prune(self, trainer: Trainer, epoch: int) -> None:
        """Judge the pack's pruning sweeps at EPOCH (app.services.pruning.after_epoch, fenced) and drop
        the replicates whose configs are pruned, by this call or another worker's: the rest of the
        pack trains on undisturbed."""
        if self.pruning is None:
            sweeps = [c.sweep_id for c in self.claims.values()]
            self.pruning = self._db("read prune rules", partial(pruning_sweeps, self.engine, sweeps))
        live = [c for c in self._live() if c.sweep_id in self.pruning]
        if not live:
            return
        deadline = time.monotonic() + self.settings.lease_seconds  # configs are judged at one epoch: wait a while
        while (not self.shutdown.is_set() and time.monotonic() < deadline and not self.beat.should_stop()
               and self._db("wait for the sweep's other configs", partial(lagging, self.engine, live, epoch))):
            self.shutdown.wait(PRUNE_POLL_SECONDS)
        pruned = self._db(f"prune at epoch {epoch}", partial(after_epoch, self.engine, live, epoch))
        for run_id in sorted(pruned & self.active):
            log.info("run %d pruned after epoch %d (its config cannot win); dropping it", run_id, epoch)
            self._drop(trainer, run_id)

    def _record_provenance(self, trainer: Trainer, spec: TrainSpec) -> None:
        """Record where and how this attempt trains (worker.provenance), fenced like every write; a
        run whose lease is lost is dropped. Gathering it never fails the pack."""
        live = self._live()
        try:
            records = pack_provenance(spec, self.settings, trainer, [c.seed for c in live])
        except Exception:
            log.exception("runs %s: could not gather their provenance; training without it", [c.run_id for c in live])
            return
        by_run = {c.run_id: record for c, record in zip(live, records, strict=True)}
        lost = self._db("record provenance", partial(record_provenance, self.engine, live, by_run))
        for run_id in sorted(lost):
            log.warning("run %d: lease lost before training; dropping it", run_id)
            self._drop(trainer, run_id)

    def _data(self, spec: TrainSpec) -> PreparedData:
        if self.settings.trainer == "fake":
            zeros = np.zeros((OUTPUT_IMAGES, 28, 28), dtype=np.float32)
            labels = np.arange(OUTPUT_IMAGES) % 10
            return PreparedData(zeros, labels, zeros, labels)
        return prepared_data(spec, self.settings)

    def _record(self, trainer: Trainer, run_id: int, epoch: int, metrics: dict[str, float], seconds: float,
                artifacts: dict[str, Artifact] | None = None) -> None:
        claim = self.claims[run_id]
        values = {**metrics, EPOCH_SECONDS: seconds}
        t = time.perf_counter()
        state = dump_state(trainer.state(self.index[run_id]))
        t = self.clock.add("checkpoint", t)
        outcome = self._db(f"record epoch {epoch} of run {run_id}", lambda: self.lease.renewing(
            lambda: record_epoch(self.engine, claim, epoch, values, state, self.settings.lease_seconds, seconds,
                                 artifacts)))
        self.clock.add("record", t)
        if outcome is not WriteOutcome.LOST:
            self.done_epoch[run_id] = epoch
        log.info("run %d epoch %d/%d %s %.2fs", run_id, epoch, claim.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), seconds)
        if outcome is WriteOutcome.LOST:
            log.warning("run %d: lease lost at epoch %d; dropping it", run_id, epoch)
            self._drop(trainer, run_id)
        elif outcome is WriteOutcome.CANCEL_REQUESTED:
            self._finish(claim, RunStatus.CANCELLED)
            log.info("run %d cancelled after epoch %d", run_id, epoch)
            self._drop(trainer, run_id)
        elif not math.isfinite(metrics.get(LOSS, 0.0)):
            self._finish(claim, RunStatus.FAILED, f"training diverged: the loss is {metrics[LOSS]} at epoch "
                                                  f"{epoch} (a lower learning rate usually helps)")
            self._drop(trainer, run_id)

    def _settle(self, trainer: Trainer, data: PreparedData) -> None:
        """After the loop: finish what completed, cancel what was asked, release the rest."""
        for run_id in sorted(self.active):
            self._settle_run(trainer, run_id, data)

    def _settle_done(self, trainer: Trainer, data: PreparedData) -> None:
        """End the runs whose own epochs are done now (a pack may mix epoch counts) and drop their
        replicates: the rest of the pack trains on without them."""
        for run_id in [i for i in sorted(self.active) if self._completed(i)]:
            self._settle_run(trainer, run_id, data)
            self._drop(trainer, run_id)

    def _settle_run(self, trainer: Trainer, run_id: int, data: PreparedData) -> None:
        t = time.perf_counter()
        try:
            self._settle_one(trainer, run_id, data)
        finally:
            self.clock.add("settle", t)

    def _settle_one(self, trainer: Trainer, run_id: int, data: PreparedData) -> None:
        claim = self.claims[run_id]
        if run_id in self.beat.lost:
            log.warning("run %d: lease lost (heartbeat refused); dropping it", run_id)
        elif run_id in self.beat.cancelled:
            self._finish(claim, RunStatus.CANCELLED)
        elif not self._completed(run_id):
            self._db(f"release run {run_id}", partial(release_run, self.engine, claim))
        else:
            self._succeed(trainer, run_id, data)

    def _completed(self, run_id: int) -> bool:
        return self.done_epoch[run_id] >= self.claims[run_id].epochs

    def _succeed(self, trainer: Trainer, run_id: int, data: PreparedData) -> None:
        """Store the final artifacts and end the run succeeded. The model file is written only while
        the lease is held, and removed again if the finish is refused: a worker that lost the run
        leaves no file of it behind."""
        claim, i = self.claims[run_id], self.index[run_id]
        artifacts = {"confusion_matrix": confusion(trainer, i, data), "outputs_after": outputs(trainer, i, data)}
        if not self._holds(claim):
            log.warning("run %d: lease lost before its model was saved; dropping it", run_id)
            return
        folder = Path(self.settings.artifacts_dir)
        written = write_model_file(trainer, i, folder, run_id)
        artifacts["model.keras"] = ("application/octet-stream", model_path(folder, run_id).read_bytes())
        if not self._finish(claim, RunStatus.SUCCEEDED, None, artifacts):
            log.warning("run %d: lease lost while its model was saved; removing the file", run_id)
            remove_model_file(folder, run_id, written)
