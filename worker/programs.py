"""Training programs: the scripts a worker's operator put in its programs folder, and the runner
that trains one claimed run of a program in a process of its own (the W&B agent's job).

Each `<name>.py` in SWEEPLAB_PROGRAMS_DIR is the program `<name>` (ProgramCatalog, rescanned with
every heartbeat of the worker); the API and the spec only ever carry such a name. A run of a
program runs as `[sys.executable, <folder>/<name>.py]` in its own process group, with the worker's
environment plus the run's config (JSON, params included), seed and epochs, and the path of a
local channel (worker.channel) through which `SweeplabCallback()` inside it reports each epoch: the
worker writes it, fenced by its lease, and keeps the lease with its heartbeat thread.

- Cancel (seen at a heartbeat or an epoch): SIGTERM to the group, SIGKILL after
  program_kill_grace_seconds; the run ends cancelled with the epochs it finished.
- Worker shutdown: the same, then the run goes back to the queue (it resumes from its checkpoint).
- Lease lost: SIGKILL at once, nothing more written.
- Exit 0: succeeded. Exit N > 0: failed with the last lines of its stderr. Killed by a signal the
  worker did not send (out of memory, kill -9): requeued as a crash is, its attempt counted.
- The worker dies: the program gets SIGKILL (PR_SET_PDEATHSIG, Linux), the lease expires and
  the reaper requeues the run.
Its stdout and stderr together (the last MAX_OUTPUT_CHARS) are stored in runs.output at every
heartbeat while it runs and when it ends.

The catalogue is worker.program_catalog's, the output's tail worker.program_output's, the process's
signals and socket folder worker.program_process'; all are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.metrics import EPOCH_SECONDS
from app.models import RunStatus
from app.retry import DatabaseUnavailable, retry_transient
from app.schemas import EpochCreate
from app.services.queue import (
    Claim,
    WriteOutcome,
    finish_run,
    load_checkpoint,
    record_epoch,
    record_output,
    record_provenance,
    release_run,
    requeue_crashed,
    restart_run,
)
from app.spec import storable
from worker.channel import (
    CHANNEL_ENV,
    RUN_CONFIG_ENV,
    RUN_EPOCHS_ENV,
    RUN_ID_ENV,
    RUN_SEED_ENV,
    ChannelServer,
    Message,
    decode_blob,
    encode_blob,
    refusal,
)
from worker.heartbeat import Heartbeat, Lease
from worker.program_catalog import SUFFIX, ProgramCatalog, scan_programs
from worker.program_output import (
    ERROR_TAIL_CHARS,
    ERROR_TAIL_LINES,
    MAX_OUTPUT_CHARS,
    READ_BYTES,
    STDERR_KEEP_CHARS,
    OutputTail,
    _pump,
)
from worker.program_process import (
    SOCKET_PATH_MAX,
    StopReason,
    _parent_death_signal,
    _signal_group,
    _socket_folder,
    signal_name,
)
from worker.provenance import program_provenance

__all__ = [  # the names moved out, and this module's own
    "ERROR_TAIL_CHARS", "ERROR_TAIL_LINES", "MAX_OUTPUT_CHARS", "READER_JOIN_SECONDS", "READ_BYTES",
    "SOCKET_PATH_MAX", "STDERR_KEEP_CHARS", "SUFFIX", "WAIT_SECONDS", "OutputTail", "ProgramCatalog",
    "ProgramRunner", "StopReason", "scan_programs", "signal_name",
]

log = logging.getLogger("sweeplab.worker")
T = TypeVar("T")

WAIT_SECONDS = 0.2  # how often the runner looks at the process, the lease and cancel
READER_JOIN_SECONDS = 5.0


# ---- one run of a program


class ProgramRunner:
    """Runs one claimed run of a program to the end: starts it, serves its channel, watches the
    lease and cancel, and settles the run from how the process ended."""

    def __init__(self, engine: Engine, settings: Settings, claim: Claim, catalog: ProgramCatalog,
                 shutdown: threading.Event, claimed_at: float | None = None):
        self.engine, self.settings, self.claim, self.catalog = engine, settings, claim, catalog
        self.shutdown = shutdown
        self.name = str(claim.train.get("program") or "")
        self.lease = Lease(settings.lease_seconds, claimed_at)
        self.active: set[int] = {claim.run_id}
        self.beat = Heartbeat(engine, settings, {claim.run_id: claim}, self.active, shutdown, self.lease)
        self.output = OutputTail()
        self.done_epoch = claim.last_epoch  # the last epoch stored for the run
        self._lock = threading.Lock()
        self._bound = False
        self._cancelled = False  # an epoch's write answered that cancel was asked
        self._lost = False  # a write was refused: the run is no longer ours
        self._database_down = False
        self._stopping: StopReason | None = None  # why the process is being stopped
        self._failure: str | None = None  # why it could not start

    # ---- the run as a whole

    def run(self) -> None:
        self.beat.start()
        try:
            self._run()
        except DatabaseUnavailable as exc:
            log.warning("run %d: %s; giving it back to the queue", self.claim.run_id, exc)
            self._ending(self._give_back)
        except SQLAlchemyError:
            log.exception("run %d: database error; stopping it (its lease will expire)", self.claim.run_id)
        finally:
            self.beat.finished.set()

    def _run(self) -> None:
        path = self.catalog.path(self.name)
        if path is None:
            self.catalog.rescan()
            log.warning("run %d: program %r is no longer in this worker's programs folder; giving it back",
                        self.claim.run_id, self.name)
            self._db("release", partial(release_run, self.engine, self.claim,
                                        f"program {self.name!r} left this worker's programs folder"))
            return
        folder = _socket_folder()
        channel = os.path.join(folder, "channel.sock")
        server = ChannelServer(channel, self._answer)
        try:
            returncode = self._train(path, channel)
        finally:
            server.close()
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._settle(returncode)

    def _train(self, path: Path, channel: str) -> int | None:
        """Run the program to its end; its return code (None if it could not start)."""
        attempt = f"attempt {self.claim.attempt}"
        if self.claim.last_epoch >= 0:
            attempt += f", the run has epochs up to {self.claim.last_epoch}"
        self.output.note(f"program {self.name} ({path}), run {self.claim.run_id}, seed {self.claim.seed}, {attempt}")
        if not self._record_provenance(path):
            return None
        try:
            proc = subprocess.Popen(
                [sys.executable, str(path)], env=self._environment(channel), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0,
                preexec_fn=_parent_death_signal(),  # one prctl call, looked up before the fork
            )
        except OSError as exc:
            self.output.note(f"could not start: {exc}")
            self._failure = f"program {self.name!r} could not start: {exc}"
            return None
        log.info("run %d: program %s started (pid %d)", self.claim.run_id, self.name, proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=_pump, args=(pipe, self.output, is_err), daemon=True, name="program-output")
                   for pipe, is_err in ((proc.stdout, False), (proc.stderr, True))]
        for reader in readers:
            reader.start()
        try:
            self._supervise(proc)
        finally:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # whatever it left behind in its group
            for reader in readers:
                reader.join(READER_JOIN_SECONDS)
        return proc.returncode

    def _record_provenance(self, path: Path) -> bool:
        """Record where and how this attempt runs (worker.provenance: the program's file hash among it),
        fenced; False if the lease is lost. Gathering it never fails the run."""
        claim = self.claim
        try:
            record = program_provenance(self.name, path, claim.seed, claim.train.get("dataset"), self.settings)
        except Exception:
            log.exception("run %d: could not gather its provenance; running without it", claim.run_id)
            return True
        lost = self._db("record provenance of",
                        partial(record_provenance, self.engine, [claim], {claim.run_id: record}))
        if claim.run_id in lost:
            with self._lock:
                self._lost = True
            return False
        return True

    def _environment(self, channel: str) -> dict[str, str]:
        return {**os.environ, RUN_CONFIG_ENV: json.dumps(self.claim.train, sort_keys=True),
                RUN_SEED_ENV: str(self.claim.seed), RUN_EPOCHS_ENV: str(self.claim.epochs),
                RUN_ID_ENV: str(self.claim.run_id), CHANNEL_ENV: channel, "PYTHONUNBUFFERED": "1"}

    def _supervise(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the process; stop it on cancel, lease loss or shutdown; save its output meanwhile."""
        saved, next_save = -1, time.monotonic()  # the first lines (and the worker's own) at once, then every heartbeat
        while True:
            try:
                proc.wait(WAIT_SECONDS)
                return
            except subprocess.TimeoutExpired:
                pass
            reason = self._stop_reason()
            if reason is not None:
                with self._lock:
                    self._stopping = reason
                self.output.note(f"stopping the program: {reason}")
                log.info("run %d: stopping program %s (%s)", self.claim.run_id, self.name, reason)
                self._stop(proc, graceful=reason in (StopReason.CANCELLED, StopReason.SHUTDOWN))
                return
            if time.monotonic() >= next_save:
                next_save = time.monotonic() + self.settings.heartbeat_seconds
                if self.output.version != saved:
                    saved = self.output.version
                    self._save_output()

    def _stop_reason(self) -> StopReason | None:
        run_id = self.claim.run_id
        with self.beat.lock:
            lost, cancelled = run_id in self.beat.lost, run_id in self.beat.cancelled
        with self._lock:
            lost, cancelled = lost or self._lost, cancelled or self._cancelled
            database_down = self._database_down
        if lost:
            return StopReason.LEASE_LOST
        if database_down:
            return StopReason.DATABASE_DOWN
        if cancelled:
            return StopReason.CANCELLED
        if self.shutdown.is_set():
            return StopReason.SHUTDOWN
        return None

    def _stop(self, proc: subprocess.Popen[bytes], graceful: bool) -> None:
        if graceful:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(self.settings.program_kill_grace_seconds)
                return
            except subprocess.TimeoutExpired:
                self.output.note(f"no exit {self.settings.program_kill_grace_seconds:g} s after SIGTERM: SIGKILL")
        _signal_group(proc, signal.SIGKILL)
        proc.wait()

    # ---- settling the run

    def _settle(self, returncode: int | None) -> None:
        claim, stopping = self.claim, self._stopping
        if stopping is None and self._stop_reason() in (StopReason.LEASE_LOST, StopReason.DATABASE_DOWN,
                                                      StopReason.CANCELLED):
            stopping = self._stop_reason()  # it exited by itself, told to stop through its channel
        if stopping is StopReason.LEASE_LOST:
            log.warning("run %d: lease lost; program stopped, nothing more written", claim.run_id)
            return
        if returncode is not None:
            self.output.note(f"exit status {returncode}" if returncode >= 0
                             else f"killed by {signal_name(returncode)}")
        if not self._save_output():
            log.warning("run %d: lease lost; nothing more written", claim.run_id)
            return
        if stopping is StopReason.DATABASE_DOWN:
            self._give_back()
        elif stopping is StopReason.CANCELLED:
            self._finish(RunStatus.CANCELLED)
            log.info("run %d cancelled after epoch %d", claim.run_id, max(self.done_epoch, 0))
        elif stopping is StopReason.SHUTDOWN:
            self._db("release", partial(release_run, self.engine, claim))
        elif returncode is None:
            self._finish(RunStatus.FAILED, self._failure)
        elif returncode == 0:
            self._finish(RunStatus.SUCCEEDED)
            log.info("run %d: program %s succeeded after epoch %d", claim.run_id, self.name, self.done_epoch)
        elif returncode < 0:
            error = f"program {self.name!r} was killed by {signal_name(returncode)} (out of memory?)"
            log.warning("run %d: %s; back to the queue (its attempt counts)", claim.run_id, error)
            self._db("requeue", partial(requeue_crashed, self.engine, claim, error))
        else:
            tail = self.output.stderr_tail()
            error = f"program {self.name!r} exited with status {returncode}" + (f": {tail}" if tail else "")
            log.warning("run %d: %s", claim.run_id, error)
            self._finish(RunStatus.FAILED, error)

    def _db(self, what: str, call: Callable[[], T]) -> T:
        return retry_transient(call, self.lease.retry_seconds(self.settings), f"{what} run {self.claim.run_id}")

    def _finish(self, status: RunStatus, error: str | None = None) -> None:
        if not self._db("finish", partial(finish_run, self.engine, self.claim, status, error)):
            log.warning("run %d: lease lost before it could end %s", self.claim.run_id, status.value)

    def _save_output(self) -> bool:
        """Store the output so far (fenced); False if the lease is lost."""
        text = self.output.text()
        return self._db("save output of", lambda: self.lease.renewing(
            lambda: record_output(self.engine, self.claim, text)))

    def _give_back(self) -> None:
        retry_transient(partial(release_run, self.engine, self.claim, "database unavailable"),
                        self.lease.left(), f"release run {self.claim.run_id}")

    def _ending(self, settle: Callable[[], None]) -> None:
        try:
            settle()
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("run %d: could not settle it (%s); its lease will expire", self.claim.run_id,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    # ---- the channel: requests of SweeplabCallback() inside the program

    def _answer(self, message: Message) -> Message:
        op = message.get("op")
        try:
            if op == "bind":
                return self._bind(message)
            if op == "epoch":
                return self._epoch(message)
            if op == "ping":
                return {"ok": True, "stop": self._stop_reason() is not None}
        except DatabaseUnavailable as exc:
            with self._lock:
                self._database_down = True
            return refusal(f"the database is unavailable: {exc}", stop=True)
        return refusal(f"unknown op {op!r}: bind, epoch or ping")

    def _bind(self, message: Message) -> Message:
        with self._lock:
            if self._bound:
                return refusal("this run is already bound to a fit: one SweeplabCallback fit per program run")
            self._bound = True
        claim, resume = self.claim, None
        if self.done_epoch >= 0:
            found = None
            if message.get("checkpoint") is True:
                found = self._db("load checkpoint of", partial(load_checkpoint, self.engine, claim.run_id))
            if found is not None and found[0] == self.done_epoch:
                resume = {"epoch": found[0], "state": encode_blob(found[1])}
                self.output.note(f"resuming from the checkpoint of epoch {found[0]}")
            else:
                why = "the program keeps no checkpoint (SweeplabCallback(checkpoint=True))" if found is None \
                    else f"its checkpoint is of epoch {found[0]}, not {self.done_epoch}"
                if not self._db("restart", partial(restart_run, self.engine, claim, f"cannot resume: {why}")):
                    return self._lose()
                self.output.note(f"starting over from epoch 0: {why}")
                self.done_epoch = -1
        return {"ok": True, "run_id": claim.run_id, "seed": claim.seed, "epochs": claim.epochs,
                "attempt": claim.attempt, "resume": resume}

    def _epoch(self, message: Message) -> Message:
        if not self._bound:
            return refusal("bind first")
        if self._stop_reason() is not None:
            return refusal("the run is stopping; no more epochs are stored", stop=True)
        try:
            epoch = EpochCreate.model_validate({k: message[k] for k in ("epoch", "metrics", "seconds") if k in message})
        except ValidationError as exc:
            err = exc.errors()[0]
            return refusal(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        if epoch.epoch > self.claim.epochs:
            return refusal(f"epoch {epoch.epoch} is past the run's {self.claim.epochs} epochs ({RUN_EPOCHS_ENV})")
        if epoch.epoch <= self.done_epoch:
            return refusal(f"epoch {epoch.epoch} is stored already (the run has epochs up to {self.done_epoch})")
        if not all(storable(key) for key in epoch.metrics):
            return refusal("a metric key holds text that cannot be stored")
        state = decode_blob(message["state"]) if message.get("state") is not None else None
        values: dict[str, float] = {k: float("nan") if v is None else v for k, v in epoch.values().items()}
        values[EPOCH_SECONDS] = epoch.seconds
        outcome = self._db(f"record epoch {epoch.epoch} of", lambda: self.lease.renewing(
            lambda: record_epoch(self.engine, self.claim, epoch.epoch, values, state, self.settings.lease_seconds,
                                 epoch.seconds)))
        if outcome is WriteOutcome.LOST:
            return self._lose()
        self.done_epoch = epoch.epoch
        log.info("run %d epoch %d/%d (program %s) %s", self.claim.run_id, epoch.epoch, self.claim.epochs, self.name,
                 " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != EPOCH_SECONDS))
        if outcome is WriteOutcome.CANCEL_REQUESTED:
            with self._lock:
                self._cancelled = True
        return {"ok": True, "stop": self._stop_reason() is not None}

    def _lose(self) -> Message:
        with self._lock:
            self._lost = True
        return refusal("the run is no longer this worker's (lease lost)", stop=True)
