"""The local channel between a worker and the training program it runs (worker.programs): a Unix
domain socket in a private folder of the worker, its path in the program's SWEEPLAB_WORKER_CHANNEL.

`SweeplabCallback()` inside the program speaks it (sweeplab.bound_run); the worker serves it and
makes every write itself, fenced by its lease (app.services.queue), so the program needs no
database or server access. One JSON object per line each way; every request gets one answer:

    -> {"op": "bind", "checkpoint": true}
    <- {"ok": true, "run_id": 7, "seed": 0, "epochs": 3, "attempt": 2,
        "resume": {"epoch": 2, "state": "<base64 npz>"} | null}
    -> {"op": "epoch", "epoch": 3, "metrics": {"loss": 0.1, "val_loss": "NaN"}, "seconds": 1.2,
        "state": "<base64 npz>" | null}
    <- {"ok": true, "stop": false}
    -> {"op": "ping"}
    <- {"ok": true, "stop": false}

An answer {"ok": false, "error": "..."} refuses the request (bad input, or the run is no longer
this worker's). "stop": true asks the program to stop training (its run was cancelled; the worker
also sends SIGTERM). The state is a checkpoint (model weights and optimizer state, numpy .npz),
stored with the epoch's metrics in one transaction; `resume` hands the last one back to an
attempt that continues a run. This module is the protocol only: stdlib imports, no database, no Keras.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sweeplab.worker")

CHANNEL_ENV = "SWEEPLAB_WORKER_CHANNEL"
RUN_CONFIG_ENV = "SWEEPLAB_RUN_CONFIG"
RUN_SEED_ENV = "SWEEPLAB_RUN_SEED"
RUN_EPOCHS_ENV = "SWEEPLAB_RUN_EPOCHS"
RUN_ID_ENV = "SWEEPLAB_RUN_ID"
MAX_MESSAGE_BYTES = 128 * 2**20  # one line: an epoch with a checkpoint of a few million parameters
ANSWER_TIMEOUT_SECONDS = 300.0  # a write is retried through database hiccups for at most a lease
ACCEPT_POLL_SECONDS = 0.2

Message = dict[str, Any]
Handler = Callable[[Message], Message]


class ChannelError(Exception):
    """The other side refused a request, answered nonsense, or went away. `stop`: the worker also
    asked the program to stop training (or it went away: nothing more can be stored)."""

    def __init__(self, message: str, stop: bool = False):
        super().__init__(message)
        self.stop = stop


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> Message:
    """One line as a JSON object; ChannelError if it is not one."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChannelError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ChannelError("a message must be a JSON object")
    return message


def encode_blob(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_blob(text: object) -> bytes:
    if not isinstance(text, str):
        raise ChannelError("a state must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ChannelError("a state must be base64 text") from None


def refusal(error: str, **extra: Any) -> Message:
    return {"ok": False, "error": error, **extra}


class ChannelClient:
    """The program's side: one connection, one request at a time (thread-safe)."""

    def __init__(self, path: str, timeout: float = ANSWER_TIMEOUT_SECONDS):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ChannelError(f"cannot reach the worker at {path}: {exc}") from None
        self._file = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def call(self, op: str, **fields: Any) -> Message:
        """Send one request; its answer, or ChannelError if refused or the worker is gone."""
        with self._lock:
            try:
                self._sock.sendall(encode({"op": op, **fields}))
                line = self._file.readline(MAX_MESSAGE_BYTES + 1)
            except OSError as exc:
                raise ChannelError(f"the worker's channel failed: {exc}", stop=True) from None
        if not line:
            raise ChannelError("the worker closed the channel", stop=True)
        answer = decode(line)
        if not answer.get("ok"):
            raise ChannelError(str(answer.get("error") or "refused"), stop=bool(answer.get("stop")))
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


class ChannelServer:
    """The worker's side: listens on PATH (only this user may connect) and answers each line with
    HANDLER's answer, one thread per connection. A handler that raises answers a refusal."""

    def __init__(self, path: str, handler: Handler):
        self.path, self.handler = path, handler
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old_mask)
        self._sock.listen(8)
        self._sock.settimeout(ACCEPT_POLL_SECONDS)
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="program-channel")
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    return
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="program-channel-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            while not self._closed.is_set():
                line = lines.readline(MAX_MESSAGE_BYTES + 1)
                if not line:
                    return
                if len(line) > MAX_MESSAGE_BYTES:
                    conn.sendall(encode(refusal(f"a message may have at most {MAX_MESSAGE_BYTES} bytes")))
                    return
                conn.sendall(encode(self._answer(line)))

    def _answer(self, line: bytes) -> Message:
        try:
            return self.handler(decode(line))
        except ChannelError as exc:
            return refusal(str(exc))
        except Exception as exc:
            log.exception("program channel: request failed")
            return refusal(f"the worker could not handle it: {type(exc).__name__}: {exc}"[:500])

    def close(self) -> None:
        """Stop listening, cut every connection, remove the socket file."""
        self._closed.set()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
