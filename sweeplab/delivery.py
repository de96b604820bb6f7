"""Delivery of SweeplabCallback's posts: one background thread per server posts every fit's
create, epochs, heartbeats and finish in order, so training never waits on the network.

- The server is away (unreachable, 502/503/504, 429): every post waits in memory and is retried
  (epoch posts are idempotent, so a retry is harmless), and arrives once it answers.
- The server refuses one post (a 4xx at once, a 5xx after a few tries): it is dropped with a
  warning, so that it cannot hold up the posts behind it.
- While a fit runs, a heartbeat goes out every few seconds (as often as the server asks): the
  server's reaper ends a run that goes silent, so a killed or frozen process leaves no run
  `running` for ever, however long one epoch lasts.
- Heartbeats go out only for fits that made progress (a batch, an epoch) since the last one. Keras
  calls no callback when fit raises, so a fit that raised sends none: the server ends its run
  failed once it is silent for SWEEPLAB_EXTERNAL_STALE_SECONDS (at once, when the callback was
  used as a context manager, which sees the exception), and the thread stops watching it after
  ABANDON_SECONDS.
- SIGTERM (Slurm, Kubernetes, `timeout`): a handler installed in the main thread ends the runs
  failed (cancelled if a stop was asked), then does what the previous handler did.
- At exit, fits that never finished end failed and the queue gets a last bounded wait.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx

from app.statuses import ExternalEnding
from sweeplab.client import Client, ClientError

log = logging.getLogger("sweeplab.callback")

MAX_PENDING = 100_000  # buffered posts; past this, new epochs are dropped (with a warning)
RETRY_FIRST, RETRY_MAX = 0.2, 2.0
WATCH_SECONDS = 0.5
IDLE_EXIT_SECONDS = 10.0
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
HEARTBEAT_SECONDS = 10.0  # until the server says how often it wants one
HEARTBEAT_BOUNDS = (0.2, 60.0)
MAX_TRIES = 5  # a post answered 500 (or 408, 425) is tried this often, then dropped
MAX_DROP_WARNINGS = 3  # per run
SIGNAL_FLUSH_SECONDS = 2.0  # on SIGTERM: a moment for the queued epochs, then the finish
SIGNAL_TIMEOUT = httpx.Timeout(3.0, connect=1.0)
ABANDON_SECONDS = 600.0  # a fit with no progress for this long is taken for one that raised


class RunHandle:
    """One fit's run as the uploader sees it."""

    def __init__(self) -> None:
        self.run_id: int | None = None
        self.refused = False  # the server refused the run: its later posts are dropped
        self.ended = False  # on_train_end ran, or the fit was seen to die
        self.cancel_requested = False
        self.warned = 0  # warnings about refused posts so far
        self.gone = False  # the server ended the run (finished, reaped): no more heartbeats
        self.last_seq = 0
        self.next_beat = 0.0  # time.monotonic() of the next heartbeat: the first goes out at once
        self.beat_every = HEARTBEAT_SECONDS
        self.progress_at = time.monotonic()  # the fit's last sign of life (set by the callback)
        self.beat_at = -math.inf  # when the last heartbeat went out

    def touch(self) -> None:
        """The fit is making progress (a batch or an epoch began): its heartbeats go on."""
        self.progress_at = time.monotonic()


@dataclass
class _Op:
    seq: int
    kind: str  # create | epoch | finish
    handle: RunHandle
    body: dict[str, Any]
    tries: int = 0


class Uploader:
    """Delivers the posts of every callback that reports to one server, in order, from one daemon
    thread, retrying while the server is unreachable; sends the heartbeats of the fits that make
    progress. One per (url, token): a wrong URL never holds up a right one."""

    def __init__(self, client: Client, token: str = "") -> None:
        self.client = client
        self.token = token
        self.cond = threading.Condition()
        self.ops: deque[_Op] = deque()
        self.seq = 0
        self.done = 0  # every op with seq <= done was delivered or given up
        self.watched: list[RunHandle] = []
        self.thread: threading.Thread | None = None
        self.outage = False
        self.dropped = 0

    def put(self, kind: str, handle: RunHandle, body: dict[str, Any]) -> None:
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

    def watch(self, handle: RunHandle) -> None:
        with self.cond:
            self.watched.append(handle)
            self._ensure_thread()

    def end(self, handle: RunHandle, status: str, error: str | None = None) -> None:
        """Queue the run's finish, once."""
        with self.cond:
            if handle.ended:
                return
            handle.ended = True
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
            self.end(handle, ExternalEnding.FAILED, error)

    def _ensure_thread(self) -> None:  # holding self.cond
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, name="sweeplab-uploader", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        backoff, idle_since = RETRY_FIRST, time.monotonic()
        while True:
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
        """Send the heartbeats that are due, for fits that made progress since their last one: a
        run without epoch or heartbeat for the server's SWEEPLAB_EXTERNAL_STALE_SECONDS is ended
        by its reaper, and one epoch may last longer. A fit silent for ABANDON_SECONDS (it raised)
        is no longer watched; the server has ended its run by then."""
        if self.outage:
            return
        now = time.monotonic()
        with self.cond:
            abandoned = [h for h in self.watched if now - h.progress_at > ABANDON_SECONDS]
            for h in abandoned:
                h.ended = True
            self.watched = [h for h in self.watched if not h.ended]
            due = [h for h in self.watched if h.run_id is not None and not (h.refused or h.gone)
                   and h.next_beat <= now and h.progress_at > h.beat_at]
        for h in abandoned:
            log.warning("sweeplab: the fit of run %s made no progress for %.0f s (did model.fit raise?); "
                        "no longer sending its heartbeats", h.run_id, ABANDON_SECONDS)
        for h in due:
            h.next_beat, h.beat_at = now + h.beat_every, now
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

_uploaders: dict[tuple[str, str | None], Uploader] = {}
_uploaders_lock = threading.Lock()


def uploader_for(url: str, token: str | None) -> Uploader:
    with _uploaders_lock:
        if not _uploaders:
            atexit.register(_at_exit)
        key = (url, token)
        if key not in _uploaders:
            _uploaders[key] = Uploader(Client(url, token=token or "", timeout=REQUEST_TIMEOUT), token or "")
        return _uploaders[key]


_previous_sigterm: Any = None
_sigterm_installed = False


def install_sigterm_handler() -> None:
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
    running = [(u, h) for u in list(_uploaders.values()) for h in list(u.watched) if not h.ended]
    deadline = time.monotonic() + SIGNAL_FLUSH_SECONDS
    while running and time.monotonic() < deadline and any(u.done < u.seq for u, _ in running):
        time.sleep(0.05)  # the uploader thread delivers the queued create and epochs meanwhile
    for u, h in running:
        if h.ended:  # fit ended meanwhile
            continue
        h.ended = True
        if h.run_id is None or h.refused or h.gone:
            continue
        status = ExternalEnding.CANCELLED if h.cancel_requested else ExternalEnding.FAILED
        try:
            with Client(u.client.url, token=u.token, timeout=SIGNAL_TIMEOUT) as client:
                client.finish_run(h.run_id, status, reason)
        except ClientError as exc:
            log.warning("sweeplab: could not end run %s (%s); the server ends it once it is stale", h.run_id, exc)


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
