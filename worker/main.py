"""The worker process: claim packs of runs, train them, reap expired leases; stop cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

from sqlalchemy import Engine

from app.config import Settings
from app.db import engine_for
from app.services.queue import claim_runs
from app.services.reaping import reap_all
from worker.trainer import TrainerFactory

log = logging.getLogger("sweeplab.worker")


def configure_tensorflow(settings: Settings) -> None:
    """Thread settings must be set before TensorFlow runs its first op."""
    if settings.tf_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(settings.tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.tf_threads)


def trainer_factory(settings: Settings) -> TrainerFactory:
    """Fake (tests), one model per replicate (pack size 1), or packed."""
    if settings.trainer == "fake":
        from worker.fake_trainer import FakeTrainer

        return FakeTrainer  # type: ignore[return-value]
    configure_tensorflow(settings)
    if settings.pack_size > 1:
        try:
            from worker.keras_packed import PackedTrainer

            return PackedTrainer
        except ImportError:
            log.warning("packed training unavailable; training one model per replicate")
    from worker.keras_single import SingleTrainer

    return SingleTrainer


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and trains until told to stop (SIGTERM/SIGINT, or `max_packs` packs, or idle with `once`)."""

    def __init__(self, settings: Settings, engine: Engine | None = None, worker_id: str | None = None):
        self.settings = settings
        self.engine = engine or engine_for(settings)
        self.worker_id = worker_id or new_worker_id()
        self.shutdown = threading.Event()
        self._factory: TrainerFactory | None = None
        self._last_reap = 0.0

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: finishing the current epoch, releasing runs, exiting", signum)
            self.shutdown.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def factory(self) -> TrainerFactory:
        if self._factory is None:
            self._factory = trainer_factory(self.settings)
        return self._factory

    def reap_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_reap >= self.settings.reap_seconds:
            self._last_reap = now
            result = reap_all(self.engine, self.settings)
            if result.changed:
                log.info("reaper: %s", result)

    def step(self) -> bool:
        """Reap if due, claim one pack and train it; False when nothing was queued."""
        from worker.runner import PackRunner

        self.reap_if_due()
        claims = claim_runs(self.engine, self.worker_id, self.settings.pack_size, self.settings.lease_seconds)
        if not claims:
            return False
        log.info("claimed runs %s (config %d, from epoch %d, attempt %d)", [c.run_id for c in claims],
                 claims[0].config_id, claims[0].last_epoch + 1, max(c.attempt for c in claims))
        PackRunner(self.engine, self.settings, claims, self.factory(), self.shutdown).run()
        return True

    def run(self, once: bool = False, max_packs: int | None = None) -> int:
        """The main loop; returns the number of packs trained. Database hiccups are retried."""
        log.info("worker %s started (pack size %d, database %s)", self.worker_id, self.settings.pack_size,
                 self.engine.dialect.name)
        packs, backoff = 0, 1.0
        while not self.shutdown.is_set():
            try:
                worked = self.step()
                backoff = 1.0
            except Exception:
                log.exception("worker loop error; retrying in %.0f s", backoff)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if worked:
                packs += 1
                if max_packs is not None and packs >= max_packs:
                    break
            elif once:
                break
            else:
                self.shutdown.wait(self.settings.poll_seconds)
        log.info("worker %s stopped after %d packs", self.worker_id, packs)
        return packs
