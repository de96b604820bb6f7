"""A claimed pack's state (its claims, which are still active, the lease and its heartbeat) and how
its runs end: the fenced queue calls, retried through transient errors while the lease lasts, that
finish, cancel, release, fail or requeue each run, and a completed run's final artifacts (confusion
matrix, outputs, the model file written only while the lease is held). worker.runner's PackRunner
trains on top of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.models import RunStatus
from app.retry import DatabaseUnavailable, retry_transient
from app.services.queue import Claim, finish_run, heartbeat, release_run, requeue_crashed
from worker.artifacts import Artifact, confusion, model_path, outputs, remove_model_file, write_model_file
from worker.heartbeat import Heartbeat, Lease
from worker.phase_clock import PhaseClock
from worker.trainer import PreparedData, Trainer, TrainerFactory

log = logging.getLogger("sweeplab.worker")
T = TypeVar("T")


class PackSettlement:
    """One claimed pack's state and the queue calls that end its runs (finished, cancelled,
    released, failed, requeued or dropped)."""

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

    def _drop(self, trainer: Trainer | None, run_id: int) -> None:
        with self.beat.lock:
            self.active.discard(run_id)
        if trainer is not None and run_id in self.index:
            trainer.drop(self.index[run_id])

    # ---- ending runs

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
