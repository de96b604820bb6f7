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

PackRunner (here) trains and records; the pack's state and how its runs end live in
worker.pack_settlement, the phase timing in worker.phase_clock, the prepared data in
worker.prepared_data and the error texts in worker.training_errors (all re-exported here).
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.metrics import EPOCH_SECONDS, LOSS
from app.models import RunStatus
from app.packing import pack_key
from app.retry import DatabaseUnavailable
from app.services.pruning import after_epoch, lagging, pruning_sweeps
from app.services.queue import WriteOutcome, load_checkpoint, record_epoch, record_provenance
from app.spec import TrainSpec
from worker.artifacts import OUTPUT_IMAGES, Artifact, outputs
from worker.checkpoint import dump_state, load_state
from worker.pack_settlement import PackSettlement
from worker.phase_clock import PhaseClock
from worker.prepared_data import _prepared, prepared_data
from worker.provenance import pack_provenance
from worker.trainer import PreparedData, State, Trainer
from worker.training_errors import is_out_of_memory, readable_error

__all__ = ["PRUNE_POLL_SECONDS", "PackRunner", "PackSettlement", "PhaseClock", "_prepared", "is_out_of_memory",
           "prepared_data", "readable_error"]

log = logging.getLogger("sweeplab.worker")
PRUNE_POLL_SECONDS = 0.25  # how often a pack of a pruning sweep looks whether the others reached its epoch


class PackRunner(PackSettlement):
    """Runs one pack to the end: trains, records, finishes, releases or drops each run."""

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

    # ---- training

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
