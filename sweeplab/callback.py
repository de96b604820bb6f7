"""SweeplabCallback: track any Keras `model.fit` in sweeplab with one line.

    model.fit(x, y, epochs=5, validation_data=(xv, yv),
              callbacks=[SweeplabCallback(url="http://127.0.0.1:8000", sweep="my study",
                                          config={"hidden": [32], "optimizer": "adam"}, seed=i)])

Each fit becomes a run of the external sweep named `sweep` (created on first use); runs with equal
`config` dicts are replicates of one config, so the dashboard shows their bands and tests.

Delivery never blocks or breaks training: epochs go into an in-memory queue that a background
thread (one per server) posts in order, retrying while the server is unreachable (epoch posts
are idempotent, so a retry is harmless). A post the server refuses is dropped with a warning (at
once for a 4xx, after a few tries for a 5xx) so that it cannot hold up the posts behind it. At the
end of fit the callback waits a bounded time for the queue to drain; whatever is left keeps
retrying in the background and once more at exit.

How a run ends when fit does not reach on_train_end:
- fit raised: Keras calls no callback, so the thread also watches the fit: once fit's frame is
  gone from its thread's stack without on_train_end, the run is marked failed;
- the process got SIGTERM (Slurm, Kubernetes, `timeout`): a handler installed in the main thread
  ends the run failed (cancelled if a stop was asked), then does what the previous handler did;
- the process was killed (SIGKILL, out of memory) or froze: the thread sends a heartbeat while fit
  runs, so the server's reaper ends a run that went silent ("the client stopped reporting").
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx
import keras

from sweeplab.client import DEFAULT_URL, Client, ClientError

log = logging.getLogger("sweeplab.callback")

KEY_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")  # what the server accepts as a metric key
MAX_KEYS = 64
MAX_PENDING = 100_000  # buffered posts; past this, new epochs are dropped (with a warning)
RETRY_FIRST, RETRY_MAX = 0.2, 2.0
WATCH_SECONDS = 0.5
IDLE_EXIT_SECONDS = 10.0
EVAL_BATCH = 256
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
HEARTBEAT_SECONDS = 10.0  # until the server says how often it wants one
HEARTBEAT_BOUNDS = (0.2, 60.0)
MAX_TRIES = 5  # a post answered 500 (or 408, 425) is tried this often, then dropped
MAX_DROP_WARNINGS = 3  # per run
SIGNAL_FLUSH_SECONDS = 2.0  # on SIGTERM: a moment for the queued epochs, then the finish
SIGNAL_TIMEOUT = httpx.Timeout(3.0, connect=1.0)


class _RunHandle:
    """One fit's run as the uploader sees it."""

    def __init__(self) -> None:
        self.run_id: int | None = None
        self.refused = False  # the server refused the run: its later posts are dropped
        self.ended = False  # on_train_end ran, or the fit was seen to die
        self.cancel_requested = False
        self.warned = 0  # warnings about refused posts so far
        self.gone = False  # the server ended the run (finished, reaped): no more heartbeats
        self.fit_frame: FrameType | None = None
        self.thread_id: int | None = None
        self.last_seq = 0
        self.next_beat = 0.0  # time.monotonic() of the next heartbeat: the first goes out at once
        self.beat_every = HEARTBEAT_SECONDS


@dataclass
class _Op:
    seq: int
    kind: str  # create | epoch | finish
    handle: _RunHandle
    body: dict[str, Any]
    tries: int = 0


class _Uploader:
    """Delivers the posts of every callback that reports to one server, in order, from one daemon
    thread, retrying while the server is unreachable; watches running fits so that a fit that
    raised ends its run failed. One per (url, token): a wrong URL never holds up a right one."""

    def __init__(self, client: Client, token: str = "") -> None:
        self.client = client
        self.token = token
        self.cond = threading.Condition()
        self.ops: deque[_Op] = deque()
        self.seq = 0
        self.done = 0  # every op with seq <= done was delivered or given up
        self.watched: list[_RunHandle] = []
        self.thread: threading.Thread | None = None
        self.outage = False
        self.dropped = 0

    def put(self, kind: str, handle: _RunHandle, body: dict[str, Any]) -> None:
        with self.cond:
            if kind == "epoch" and len(self.ops) >= MAX_PENDING:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("sweeplab: %d posts are waiting for the server; dropping new epochs", MAX_PENDING)
                return
            self.seq += 1
            self.ops.append(_Op(self.seq, kind, handle, body))
            handle.last_seq = self.seq
            self._ensure_thread()
            self.cond.notify_all()

    def watch(self, handle: _RunHandle) -> None:
        with self.cond:
            self.watched.append(handle)
            self._ensure_thread()

    def end(self, handle: _RunHandle, status: str, error: str | None = None) -> None:
        """Queue the run's finish, once."""
        with self.cond:
            if handle.ended:
                return
            handle.ended, handle.fit_frame = True, None
            self.watched = [h for h in self.watched if h is not handle]
        self.put("finish", handle, {"status": status, "error": error})

    def flush(self, seq: int, timeout: float) -> bool:
        """Wait up to TIMEOUT seconds for every op up to SEQ to be delivered (or given up)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.done < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def end_unfinished(self, error: str) -> None:
        with self.cond:
            unfinished = list(self.watched)
        for handle in unfinished:
            self.end(handle, "failed", error)

    def _ensure_thread(self) -> None:  # holding self.cond
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, name="sweeplab-uploader", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        backoff, idle_since = RETRY_FIRST, time.monotonic()
        while True:
            self._check_fits()
            self._beat()
            with self.cond:
                if not self.ops:
                    if not self.watched and time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                        self.thread = None
                        return
                    self.cond.wait(WATCH_SECONDS)
                    continue
                op = self.ops[0]
            if self._deliver(op):
                with self.cond:
                    self.ops.popleft()
                    self.done = op.seq
                    self.cond.notify_all()
                backoff, idle_since = RETRY_FIRST, time.monotonic()
            else:
                time.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    def _deliver(self, op: _Op) -> bool:
        """Post one op; False when it should be tried again later."""
        h = op.handle
        if h.refused or h.gone or (op.kind != "create" and h.run_id is None):
            return True
        try:
            if op.kind == "create":
                h.run_id = int(self.client.create_external_run(**op.body)["id"])
            elif op.kind == "epoch":
                ack = self.client.log_epoch(h.run_id, **op.body)  # type: ignore[arg-type]
                h.cancel_requested = h.cancel_requested or bool(ack.get("cancel_requested"))
            else:
                self.client.finish_run(h.run_id, **op.body)  # type: ignore[arg-type]
        except ClientError as exc:
            if exc.unavailable:  # the server is away or busy: every post would wait, keep them all
                if not self.outage:
                    self.outage = True
                    log.warning("sweeplab: %s; keeping epochs in memory and retrying", exc)
                return False
            op.tries += 1
            if exc.retryable and op.tries < MAX_TRIES:  # a 500 may be passing: a few more tries
                return False
            self._refused(op, exc)
            return True
        except Exception:  # a bug here must not stop the queue
            log.exception("sweeplab: could not post %s", op.kind)
            return True
        if self.outage:
            self.outage = False
            log.warning("sweeplab: %s answers again; sending the buffered epochs", self.client.url)
        return True

    def _refused(self, op: _Op, exc: ClientError) -> None:
        """Drop a post the server refused, so the ones behind it go on; say so (a few times a run)."""
        h = op.handle
        h.refused = h.refused or op.kind == "create"
        h.gone = h.gone or exc.status_code in (404, 409)  # the run ended there: its later posts would be too
        h.warned += 1
        if h.warned > MAX_DROP_WARNINGS:
            return
        tries = f" after {op.tries} tries" if op.tries > 1 else ""
        if op.kind == "create":
            log.warning("sweeplab: the server refused the run (%s); training goes on untracked", exc)
        else:
            what = f"epoch {op.body.get('epoch')}" if op.kind == "epoch" else op.kind
            more = "; further refusals of this run are not shown" if h.warned == MAX_DROP_WARNINGS else ""
            log.warning("sweeplab: the server refused %s of run %s (%s)%s; dropped it, later posts go on%s",
                        what, h.run_id, exc, tries, more)

    def _beat(self) -> None:
        """Send the heartbeats that are due: a run without epoch or heartbeat for the server's
        SWEEPLAB_EXTERNAL_STALE_SECONDS is ended by its reaper, and one epoch may last longer."""
        if self.outage:
            return
        now = time.monotonic()
        with self.cond:
            due = [h for h in self.watched if h.run_id is not None and not (h.ended or h.refused or h.gone)
                   and h.next_beat <= now]
        for h in due:
            h.next_beat = now + h.beat_every
            try:
                ack = self.client.heartbeat(h.run_id)  # type: ignore[arg-type]
            except ClientError as exc:
                if exc.status_code in (404, 409):
                    h.gone = True
                    log.warning("sweeplab: run %s ended on the server (%s); training goes on untracked",
                                h.run_id, exc)
                continue  # anything else: the next heartbeat, or the next epoch, will do
            except Exception:  # a bug here must not stop the queue
                log.exception("sweeplab: could not send a heartbeat")
                continue
            h.cancel_requested = h.cancel_requested or bool(ack.get("cancel_requested"))
            every = ack.get("heartbeat_seconds")
            if isinstance(every, int | float) and math.isfinite(every):
                h.beat_every = min(max(float(every), HEARTBEAT_BOUNDS[0]), HEARTBEAT_BOUNDS[1])
                h.next_beat = now + h.beat_every

    def _check_fits(self) -> None:
        """A watched fit whose frame left its thread's stack without on_train_end raised."""
        with self.cond:
            handles = [h for h in self.watched if h.fit_frame is not None]
        if not handles:
            return
        frames = sys._current_frames()
        for h in handles:
            f = frames.get(h.thread_id or 0)
            while f is not None and f is not h.fit_frame:
                f = f.f_back
            if f is None:
                self.end(h, "failed", "model.fit raised or was interrupted before it finished")


_uploaders: dict[tuple[str, str | None], _Uploader] = {}
_uploaders_lock = threading.Lock()


def _get_uploader(url: str, token: str | None) -> _Uploader:
    with _uploaders_lock:
        if not _uploaders:
            atexit.register(_at_exit)
        key = (url, token)
        if key not in _uploaders:
            _uploaders[key] = _Uploader(Client(url, token=token or "", timeout=REQUEST_TIMEOUT), token or "")
        return _uploaders[key]


_previous_sigterm: Any = None
_sigterm_installed = False


def _install_sigterm_handler() -> None:
    """End this process's runs on SIGTERM, then do what the previous handler did. Only the main
    thread can install one; an ignored SIGTERM, or a handler set outside Python, is left alone."""
    global _previous_sigterm, _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous == signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _previous_sigterm, _sigterm_installed = previous, True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    try:
        _end_runs_now("the training process got SIGTERM")
    except Exception:  # the process must still stop as it would have
        log.exception("sweeplab: could not end the runs on SIGTERM")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of the signal, as without us
    os.kill(os.getpid(), signal.SIGTERM)


def _end_runs_now(reason: str) -> None:
    """Post, from this thread and within a few seconds, the finish of every fit still running:
    failed with REASON, or cancelled if a stop was asked. Runs in a signal handler, so it takes no
    lock the interrupted code may hold: it reads the queues as they are and posts with its own client."""
    uploaders = list(_uploaders.values())
    deadline = time.monotonic() + SIGNAL_FLUSH_SECONDS
    while time.monotonic() < deadline and any(u.done < u.seq for u in uploaders):
        time.sleep(0.05)  # the uploader thread delivers the queued create and epochs meanwhile
    for u in uploaders:
        for h in list(u.watched):
            if h.ended:
                continue
            h.ended, h.fit_frame = True, None
            if h.run_id is None or h.refused or h.gone:
                continue
            status = "cancelled" if h.cancel_requested else "failed"
            try:
                with Client(u.client.url, token=u.token, timeout=SIGNAL_TIMEOUT) as client:
                    client.finish_run(h.run_id, status, reason)
            except ClientError as exc:
                log.warning("sweeplab: could not end run %s (%s); the server ends it once it is stale",
                            h.run_id, exc)


def flush(timeout: float = 30.0) -> bool:
    """Wait up to TIMEOUT seconds in all until every buffered post of this process is delivered."""
    deadline = time.monotonic() + timeout
    with _uploaders_lock:
        uploaders = list(_uploaders.values())
    return all([u.flush(u.seq, max(0.0, deadline - time.monotonic())) for u in uploaders])


def _at_exit() -> None:
    """End fits that never finished as failed, then give the queues a last bounded wait."""
    with _uploaders_lock:
        uploaders = list(_uploaders.values())
    for u in uploaders:
        u.end_unfinished("the Python process exited before model.fit finished")
    if not flush(float(os.environ.get("SWEEPLAB_EXIT_TIMEOUT", "30"))):
        left = sum(len(u.ops) for u in uploaders)
        log.warning("sweeplab: %d posts could not be delivered before exit; their epochs are lost", left)


def _jsonable(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain JSON dict: numpy scalars and arrays become numbers and lists, other objects strings."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    data = json.loads(json.dumps(dict(config or {}), default=default, sort_keys=True))
    if not isinstance(data, dict):
        raise TypeError("config must be a dict")
    return data


def _number(v: Any) -> float | None:
    value = float(v)
    return value if math.isfinite(value) else None


def clean_logs(logs: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The numeric entries of Keras' logs under keys the server accepts; NaN and inf as None."""
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        if len(out) >= MAX_KEYS or not isinstance(key, str) or not KEY_PATTERN.match(key):
            continue
        try:
            out[key] = _number(value)
        except (TypeError, ValueError):
            continue
    return out


def _find_fit(model: Any) -> FrameType | None:
    """The frame of the `fit` call that is running the callbacks (Keras 3, any backend)."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "__len__")


class SweeplabCallback(keras.callbacks.Callback):
    """Log a Keras fit to sweeplab as one run: epoch 0 (an evaluation before training), then
    every epoch's logs (any keys Keras reports), then succeeded or failed.

    url: the sweeplab server ($SWEEPLAB_URL, else http://127.0.0.1:8000); token: its API token
    ($SWEEPLAB_API_TOKEN); sweep: the sweep's name, joined if it exists; config: the settings
    that define the run (equal dicts group as replicates of one config); seed: the replicate's
    seed (random when None). validation_data: data for epoch 0's val_* metrics when fit's own
    cannot be found. initial_evaluation: log epoch 0 at all. flush_timeout: seconds the end of
    fit waits for undelivered epochs before leaving them to the background thread.
    """

    def __init__(self, url: str | None = None, sweep: str = "notebook", config: Mapping[str, Any] | None = None,
                 seed: int | None = None, token: str | None = None, *, study: str | None = None,
                 dataset: str | None = None, validation_data: Any = None, initial_evaluation: bool = True,
                 flush_timeout: float = 10.0) -> None:
        super().__init__()
        if not isinstance(sweep, str) or not sweep.strip():
            raise ValueError("sweep must be a non-empty name")
        self.url = (url or os.environ.get("SWEEPLAB_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("SWEEPLAB_API_TOKEN")
        self.sweep, self.study, self.dataset = sweep.strip(), study, dataset
        self.config = _jsonable(config)
        self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
        self.validation_data = validation_data
        self.initial_evaluation = initial_evaluation
        self.flush_timeout = flush_timeout
        self._handle: _RunHandle | None = None
        self._epoch_started = time.perf_counter()
        self._stop_logged = False

    @property
    def run_id(self) -> int | None:
        """The id of the current (or last) fit's run, once the server has answered."""
        return self._handle.run_id if self._handle else None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self._begin()
        except Exception as exc:  # tracking must never break training
            log.warning("sweeplab: this fit is not tracked: %s", exc)
            self._handle = None

    def _begin(self) -> None:
        uploader = _get_uploader(self.url, self.token)
        fit = _find_fit(self.model)
        fit_locals = dict(fit.f_locals) if fit is not None else {}
        create = {"sweep": self.sweep, "config": self.config, "seed": self.seed, "study": self.study,
                  "dataset": self.dataset, "epochs": int((self.params or {}).get("epochs") or 0),
                  "client_token": uuid.uuid4().hex, "host": f"{socket.gethostname()} pid {os.getpid()}"[:200]}
        handle = _RunHandle()
        handle.fit_frame, handle.thread_id = fit, threading.get_ident()
        self._handle, self._stop_logged = handle, False
        _install_sigterm_handler()
        uploader.watch(handle)
        uploader.put("create", handle, create)
        if self.initial_evaluation and not fit_locals.get("initial_epoch"):
            metrics = self._initial_metrics(fit_locals)
            if metrics:
                uploader.put("epoch", handle, {"epoch": 0, "metrics": metrics, "seconds": 0.0})

    def _initial_metrics(self, fit_locals: dict[str, Any]) -> dict[str, float | None]:
        """Epoch 0: the untrained model on the validation data (val_*) and, when fit was given
        arrays, on the training data too, as sweeplab's workers do."""
        batch = max(int(fit_locals.get("validation_batch_size") or fit_locals.get("batch_size") or 32), EVAL_BATCH)
        out: dict[str, float | None] = {}
        val = self.validation_data
        if val is None and "val_x" in fit_locals:
            val = (fit_locals["val_x"], fit_locals.get("val_y"), fit_locals.get("val_sample_weight"))
        if val is not None:
            out.update({f"val_{k}": v for k, v in self._evaluate(val, batch).items()})
        x = fit_locals.get("x")
        if _is_array(x) and (fit_locals.get("y") is None or _is_array(fit_locals.get("y"))):
            out.update(self._evaluate((x, fit_locals.get("y"), fit_locals.get("sample_weight")), batch))
        return clean_logs(out)

    def _evaluate(self, data: Any, batch: int) -> dict[str, Any]:
        try:
            if isinstance(data, tuple | list):
                x, y, sw = (*data, None, None)[:3]
                if not _is_array(x):
                    return {}
                result = self.model.evaluate(x, y, sample_weight=sw, batch_size=batch, verbose=0, return_dict=True)
            elif inspect.isgenerator(data) or (hasattr(data, "__next__") and not hasattr(data, "__len__")):
                return {}  # a one-shot iterator: evaluating it would eat fit's data
            else:
                result = self.model.evaluate(data, verbose=0, return_dict=True)
        except Exception as exc:
            log.warning("sweeplab: no epoch-0 evaluation: %s", exc)
            return {}
        return dict(result) if isinstance(result, Mapping) else {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        handle = self._handle
        if handle is None:
            return
        try:
            body = {"epoch": epoch + 1, "metrics": clean_logs(logs),
                    "seconds": time.perf_counter() - self._epoch_started}
            _get_uploader(self.url, self.token).put("epoch", handle, body)
            if handle.cancel_requested and self.model is not None:
                self.model.stop_training = True
                if not self._stop_logged:
                    self._stop_logged = True
                    log.warning("sweeplab: run %s was cancelled from sweeplab; stopping training", handle.run_id)
        except Exception as exc:
            log.warning("sweeplab: epoch %d not logged: %s", epoch + 1, exc)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        handle = self._handle
        if handle is None:
            return
        try:
            uploader = _get_uploader(self.url, self.token)
            uploader.end(handle, "succeeded")
            if not uploader.flush(handle.last_seq, self.flush_timeout):
                log.warning("sweeplab: %s has not taken this run's epochs yet; still retrying in the background",
                            self.url)
        except Exception as exc:
            log.warning("sweeplab: could not finish the run: %s", exc)

