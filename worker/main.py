"""The worker process: claim packs of runs, train them, reap expired leases; stop cleanly on SIGTERM."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.db import engine_for
from app.machine import package_version
from app.retry import DatabaseUnavailable, retry_transient
from app.services.planner import plan, plan_pending
from app.services.queue import Claim, claim_runs, claims_with_token, new_token
from app.services.reaping import reap_all
from app.spec import TrainSpec
from worker import xla_cache
from worker.presence import Presence
from worker.programs import ProgramCatalog
from worker.trainer import PreparedData, State, TrainerFactory

log = logging.getLogger("sweeplab.worker")


XLA_CACHE_FLAG = "tf_xla_persistent_cache_directory"
XLA_NO_EIGEN_THREADS = "--xla_cpu_multi_thread_eigen=false"
# LLVM's expensive passes off for XLA's CPU code: compiles ~15% faster and the packed step no slower
# (2026-12-04, Zen 5 EPYC, one thread, 10 replicates, Adam, three alternating runs, us per step:
# width 32 576 -> 530, 128 1652 -> 1503, 0/2/256 within the noise). Not on a GPU machine, unmeasured there.
XLA_CHEAP_LLVM = "--xla_llvm_disable_expensive_passes=true"


def xla_flags(current: str, gpu: bool) -> str:
    """CURRENT XLA_FLAGS with the worker's defaults added, each unless CURRENT names its flag already
    (a user's own setting wins): XLA_NO_EIGEN_THREADS always, XLA_CHEAP_LLVM without a GPU."""
    flags = current.split()
    for default in [XLA_NO_EIGEN_THREADS] + ([] if gpu else [XLA_CHEAP_LLVM]):
        name = default.split("=")[0]
        if not any(f.split("=")[0] == name for f in flags):
            flags.append(default)
    return " ".join(flags)


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver shows a device here, without importing TensorFlow."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def xla_cache_dir(settings: Settings) -> Path:
    """Where this worker's compiled XLA programs are kept (TensorFlow's persistent compilation
    cache), shared by every worker with the same artifacts folder and TensorFlow: under the
    artifacts folder, one subfolder per TensorFlow version and XLA_FLAGS (an executable compiled
    by another version or with other flags is never loaded)."""
    version = package_version("tensorflow")  # any of its distributions (tensorflow-cpu here), not imported
    flags = hashlib.sha256(os.environ.get("XLA_FLAGS", "").encode()).hexdigest()[:8]
    return Path(settings.artifacts_dir) / "xla-cache" / f"tf-{version}-{flags}"


def configure_tensorflow(settings: Settings) -> None:
    """TensorFlow's settings, once, before it is imported: its environment is read at import and at
    XLA's first compile, thread counts before its first op.

    XLA's Eigen threading is turned off: packed training (worker.keras_packed) runs one pack's XLA
    loop per core from parallel threads, and with Eigen threading their matmuls queued on
    TensorFlow's shared intra-op pool (2 cores, 2 packs of 5: 0.99 ms per step with it, 0.47 ms
    without; one pack of 10 takes 0.88 ms either way). A process whose XLA compiled before this call
    keeps it (packs then take turns: correct, about as fast as one pack). On a machine without a
    GPU, LLVM's expensive passes are off too (XLA_CHEAP_LLVM). XLA_FLAGS naming either flag wins.

    Compiled programs persist (xla_cache_dir; TF_XLA_FLAGS naming a cache directory of its own
    wins): a pack shape compiles once for every worker and restart, not once per process (a
    width-32 training loop: ~1.7 CPU-s to compile, ~0.1 s to load). TensorFlow is given this
    process's own folder inside it, which Worker.step syncs with the shared one between packs, so
    no worker reads an entry another is still writing (worker.xla_cache)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info lines in the worker's log
    os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""), nvidia_gpu_present())
    if XLA_CACHE_FLAG not in os.environ.get("TF_XLA_FLAGS", ""):
        try:  # TensorFlow reads and writes a folder of this process's own (why: worker.xla_cache)
            own = xla_cache.open_cache(xla_cache_dir(settings))
        except OSError as exc:
            log.warning("no XLA compilation cache (%s): every worker compiles its own", exc)
        else:
            os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} --{XLA_CACHE_FLAG}={own}".strip()
    if settings.tf_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(settings.tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.tf_threads)


def trainer_factory(settings: Settings) -> TrainerFactory:
    """Fake (tests), or the one place that decides how a config trains: packed when its model is a
    plain Dense stack (a `hidden` model, or `layers` of dense layers only: worker.trainer.dense_equivalent)
    and the pack size allows; else one model per replicate with model.fit (conv, dropout, batch
    normalization, a builder's model; builders import from the code folder)."""
    if settings.trainer == "fake":
        from worker.fake_trainer import FakeTrainer

        return FakeTrainer
    configure_tensorflow(settings)
    from worker.keras_single import SingleTrainer
    from worker.trainer import Trainer, dense_equivalent

    packed: TrainerFactory | None = None
    if settings.pack_size > 1:
        try:
            from worker.keras_packed import PackedTrainer

            packed = PackedTrainer
        except ImportError:
            log.warning("packed training unavailable; training one model per replicate")
    if settings.code_dir is not None:
        from worker.builders import on_path

        on_path(settings.code_dir)

    def choose(spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None],
               learning_rates: list[float] | None = None) -> Trainer:
        dense = dense_equivalent(spec)
        if packed is not None and dense is not None:
            return packed(dense, seeds, data, states, learning_rates)
        return SingleTrainer(spec, seeds, data, states, learning_rates, code_dir=settings.code_dir)

    return choose


GPU_PACK_SIZE = 256  # Settings.pack_size's bound: on a GPU every replicate of a config trains in one pack


def with_device_pack_size(settings: Settings) -> Settings:
    """The settings a worker claims with. Where TensorFlow sees a GPU and no pack size was chosen
    (SWEEPLAB_PACK_SIZE, --pack-size), packs of up to GPU_PACK_SIZE runs: all replicates of a
    config and of the configs that share its pack key (mixed rates and epochs) in one claim, which
    the packed trainer trains as one pack per GPU (worker.keras_packed.pack_devices). A CPU's
    default stays (memory-bounded, app.config)."""
    if settings.trainer == "fake" or settings.pack_size <= 1 or "pack_size" in settings.model_fields_set:
        return settings
    try:
        from worker.keras_packed import accelerators
    except ImportError:
        return settings
    gpus = accelerators()
    if not gpus:
        return settings
    log.info("%d GPU(s) (%s): packs of up to %d runs, one pack per device", len(gpus), ", ".join(gpus),
             GPU_PACK_SIZE)
    return settings.model_copy(update={"pack_size": GPU_PACK_SIZE})


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def reap_once(engine: Engine, settings: Settings) -> None:
    """One reaper pass; a failure is logged and the next pass tries again."""
    try:
        result = retry_transient(lambda: reap_all(engine, settings), settings.reap_seconds, "reaper")
    except DatabaseUnavailable as exc:
        log.warning("reaper: %s", exc)
        return
    except SQLAlchemyError:
        log.exception("reaper failed")
        return
    if result.changed:
        log.info("reaper: %s", result)


class Reaper(threading.Thread):
    """Reaps expired leases every reap_seconds, also while this worker trains a long pack: a dead
    worker's runs go back to the queue within a lease and a reap, whatever the others are doing."""

    MIN_WAIT_SECONDS = 0.05  # a reap_seconds of 0 (tests) must not spin

    def __init__(self, engine: Engine, settings: Settings):
        super().__init__(daemon=True, name="reaper")
        self.engine, self.settings = engine, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(max(self.settings.reap_seconds, self.MIN_WAIT_SECONDS)):
            reap_once(self.engine, self.settings)


PLAN_IDLE_SECONDS = 2.0  # an idle worker asks the planner for new work at most this often


class Worker:
    """Claims and trains until told to stop (SIGTERM/SIGINT, or `max_packs` packs, or idle with `once`)."""

    def __init__(self, settings: Settings, engine: Engine | None = None, worker_id: str | None = None,
                 factory: TrainerFactory | None = None):
        self.settings = settings
        self.engine = engine or engine_for(settings)
        self.worker_id = worker_id or new_worker_id()
        self.shutdown = threading.Event()
        self._factory = factory
        self._sized = False  # pack size adjusted to the devices (with_device_pack_size)
        self.catalog = ProgramCatalog(settings.programs_dir)  # the training programs it offers
        self._planned_idle_at: float | None = None

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: finishing the current epoch, releasing runs, exiting", signum)
            self.shutdown.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def factory(self) -> TrainerFactory:
        if self._factory is None:
            self._factory = trainer_factory(self.settings)
        if not self._sized:  # after the factory: TensorFlow is configured and imported by then
            self._sized = True
            self.settings = with_device_pack_size(self.settings)
        return self._factory

    def claim(self) -> list[Claim]:
        """Claim a pack, retried through transient database errors. A try whose commit's answer was
        lost may have claimed runs: the retry looks for them by the claim's token first."""
        token, tries = new_token(), 0

        def attempt() -> list[Claim]:
            nonlocal tries
            tries += 1
            if tries > 1 and (held := claims_with_token(self.engine, token)):
                return held
            return claim_runs(self.engine, self.worker_id, self.settings.pack_size, self.settings.lease_seconds,
                              token, programs=self.catalog.names())

        return retry_transient(attempt, self.settings.db_retry_seconds, "claim")

    def step(self) -> bool:
        """Claim one pack and train it; False when nothing was queued."""
        from worker.runner import PackRunner

        factory = self.factory()  # the TensorFlow import comes before the first claim, not inside a lease
        claimed_at = time.monotonic()
        claims = self.claim()
        if not claims and self._plan_idle():
            claims = self.claim()
        if not claims:
            return False
        configs = sorted({c.config_id for c in claims})  # several when a pack mixes rates or epochs
        log.info("claimed runs %s (%s, from epoch %d, attempt %d)", [c.run_id for c in claims],
                 f"config {configs[0]}" if len(configs) == 1 else f"configs {configs}", claims[0].last_epoch + 1,
                 max(c.attempt for c in claims))
        xla_cache.sync()  # others' programs in; nothing of this process compiles between packs
        if claims[0].train.get("program"):  # claimed alone: a process of its own
            from worker.programs import ProgramRunner

            ProgramRunner(self.engine, self.settings, claims[0], self.catalog, self.shutdown, claimed_at).run()
        else:
            PackRunner(self.engine, self.settings, claims, factory, self.shutdown, claimed_at).run()
        xla_cache.sync()  # this pack's compiles out, for the other workers
        for sweep_id in sorted({c.sweep_id for c in claims}):  # a pack may hold runs of several sweeps
            self._plan(sweep_id)
        return True

    def _plan(self, sweep_id: int) -> None:
        """Ask the planner for the sweep's next configs or seeds now that a pack of it ended (adaptive
        sweeps only; a failure is logged and the idle plan or the server's timer tries again)."""
        try:
            retry_transient(lambda: plan(self.engine, sweep_id, lease_seconds=self.settings.lease_seconds),
                            self.settings.db_retry_seconds, "plan")
        except Exception:
            log.warning("planning sweep %d failed; it is planned again later", sweep_id, exc_info=True)

    def _plan_idle(self) -> bool:
        """With the queue empty, plan the adaptive sweeps that have nothing queued (at most every
        PLAN_IDLE_SECONDS); True if that queued new runs."""
        now = time.monotonic()
        if self._planned_idle_at is not None and now - self._planned_idle_at < PLAN_IDLE_SECONDS:
            return False
        self._planned_idle_at = now
        try:
            return bool(retry_transient(lambda: plan_pending(self.engine, lease_seconds=self.settings.lease_seconds),
                                        self.settings.db_retry_seconds, "plan"))
        except Exception:
            log.warning("planning pending sweeps failed; trying again later", exc_info=True)
            return False

    def run(self, once: bool = False, max_packs: int | None = None) -> int:
        """The main loop; returns the number of packs trained. Database hiccups are retried."""
        log.info("worker %s started (pack size %d, database %s)", self.worker_id, self.settings.pack_size,
                 self.engine.dialect.name)
        reap_once(self.engine, self.settings)
        reaper = Reaper(self.engine, self.settings)
        reaper.start()
        presence = Presence(self.engine, self.settings, self.worker_id, self.catalog)
        presence.beat()  # listed (with its programs) before its first claim
        presence.start()
        try:
            packs = self._loop(once, max_packs)
        finally:
            reaper.stopped.set()
            presence.stop()
        log.info("worker %s stopped after %d packs", self.worker_id, packs)
        return packs

    def _loop(self, once: bool, max_packs: int | None) -> int:
        """With `once`, the worker exits when a claim finds nothing twice in a row, one poll and one
        reap apart (the grace poll): a run another worker is releasing, a lease that has just expired
        or a planner's new configs still get claimed. Its own pack always ends before the next claim."""
        packs, backoff, graced = 0, 1.0, False
        while not self.shutdown.is_set():
            try:
                worked = self.step()
                backoff = 1.0
            except DatabaseUnavailable as exc:
                log.warning("%s; retrying in %.0f s", exc, backoff)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except Exception:
                log.exception("worker loop error; retrying in %.0f s", backoff)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if worked:
                packs, graced = packs + 1, False
                if max_packs is not None and packs >= max_packs:
                    break
            elif once and not graced:
                graced = True
                self.shutdown.wait(self.settings.poll_seconds)
                reap_once(self.engine, self.settings)
            elif once:
                break
            else:
                self.shutdown.wait(self.settings.poll_seconds)
        return packs
