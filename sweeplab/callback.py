"""SweeplabCallback: track any Keras `model.fit` in sweeplab with one line.

    model.fit(x, y, epochs=5, validation_data=(xv, yv),
              callbacks=[SweeplabCallback(url="http://127.0.0.1:8000", sweep="my study",
                                          config={"hidden": [32], "optimizer": "adam"}, seed=i,
                                          validation_data=(xv, yv), training_data=(x, y))])

Each fit becomes a run of the external sweep named `sweep` (created on first use); runs with equal
`config` dicts are replicates of one config, so the dashboard shows their bands and tests. Keras
hands callbacks neither fit's data nor its validation data, so epoch 0 (the untrained model, as
sweeplab's workers log it) is evaluated on the data given to the callback itself.

Delivery never blocks or breaks training: sweeplab.delivery posts from a background thread,
keeps posts in memory while the server is away, drops one it refuses, sends heartbeats while fit
makes progress, and ends the run when the process gets SIGTERM or Python exits. Keras calls no
callback when fit raises: used as a context manager (`with SweeplabCallback(...) as cb:`), the
callback sees the exception and ends the run failed at once; otherwise the fit's heartbeats stop.
A run that stops reporting (fit raised, or the process was killed outright: SIGKILL, out of
memory) is ended by the server once silent for SWEEPLAB_EXTERNAL_STALE_SECONDS ("the client
stopped reporting").
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import keras

from app.machine import machine_facts
from app.statuses import ExternalEnding
from sweeplab.bound_run import BoundRun
from sweeplab.client import DEFAULT_URL
from sweeplab.delivery import MAX_TRIES, RunHandle, flush, install_sigterm_handler, uploader_for

__all__ = ["MAX_TRIES", "SweeplabCallback", "clean_logs", "flush"]

log = logging.getLogger("sweeplab.callback")

KEY_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")  # what the server accepts as a metric key
MAX_KEYS = 64
EVAL_BATCH = 256


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


def _number(v: Any) -> float | str:
    """A JSON value for V: the float, or the server's name for NaN, inf and -inf (JSON has none)."""
    value = float(v)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def clean_logs(logs: Mapping[str, Any] | None) -> dict[str, float | str | None]:
    """The numeric entries of Keras' logs under keys the server accepts; NaN and inf by name, so
    that they are stored as a worker's are."""
    out: dict[str, float | str | None] = {}
    for key, value in (logs or {}).items():
        if len(out) >= MAX_KEYS or not isinstance(key, str) or not KEY_PATTERN.match(key):
            continue
        try:
            out[key] = _number(value)
        except (TypeError, ValueError):
            continue
    return out


CALLBACK_KIND = "keras_callback"


def run_provenance(seed: int) -> dict[str, Any]:
    """What the server records as the run's provenance (app.services.provenance): the seed, the
    versions of sweeplab, Python, TensorFlow, Keras and NumPy, host and CPU (gathered once per
    process); {} if gathering fails, so tracking goes on without it."""
    try:
        return {**machine_facts(), "seed": seed, "trainer": CALLBACK_KIND}
    except Exception as exc:  # tracking must never break training
        log.warning("sweeplab: no provenance for this run: %s", exc)
        return {}


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "__len__")


class _Progress(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Keeps a run's heartbeats going while the callback evaluates epoch 0 (a long evaluation)."""

    def __init__(self, handle: RunHandle) -> None:
        super().__init__()
        self.handle = handle

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.handle.touch()


class SweeplabCallback(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Log a Keras fit to sweeplab as one run: epoch 0 (an evaluation before training), then
    every epoch's logs (any keys Keras reports), then succeeded or failed.

    url: the sweeplab server ($SWEEPLAB_URL, else http://127.0.0.1:8000); token: its API token
    ($SWEEPLAB_API_TOKEN); sweep: the sweep's name, joined if it exists; config: the settings
    that define the run (equal dicts group as replicates of one config); seed: the replicate's
    seed (random when None). validation_data, training_data: (x, y[, sample_weight]) or a dataset
    to evaluate the untrained model on as epoch 0 (val_* and training metrics), usually the data
    given to fit; epoch 0 is logged when either is given, unless initial_evaluation is False or
    fit resumes (initial_epoch > 0). flush_timeout: seconds the end of fit waits for undelivered
    epochs before leaving them to the background thread.

    As a context manager it ends the run of a fit that raised inside the `with` failed at once,
    with the exception's message (Keras calls no callback then).

    Inside a training program a worker runs ($SWEEPLAB_WORKER_CHANNEL set) and given no url, the
    fit binds to the worker's run instead (sweeplab.bound_run): sweep, config, seed and token are
    the run's, every epoch goes through the worker, and checkpoint=True saves the model and its
    optimizer with each epoch so that a requeued run resumes after its last one.
    """

    def __init__(self, url: str | None = None, sweep: str = "notebook", config: Mapping[str, Any] | None = None,
                 seed: int | None = None, token: str | None = None, *, study: str | None = None,
                 dataset: str | None = None, validation_data: Any = None, training_data: Any = None,
                 initial_evaluation: bool = True, flush_timeout: float = 10.0, checkpoint: bool = False) -> None:
        super().__init__()
        if not isinstance(sweep, str) or not sweep.strip():
            raise ValueError("sweep must be a non-empty name")
        self.url = (url or os.environ.get("SWEEPLAB_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("SWEEPLAB_API_TOKEN")
        self.checkpoint = checkpoint  # a worker's program: save (and resume from) the model each epoch
        self._bound = BoundRun.from_env() if url is None else None
        self.sweep, self.study, self.dataset = sweep.strip(), study, dataset
        self.config = _jsonable(config)
        self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
        self.validation_data = validation_data
        self.training_data = training_data
        self.initial_evaluation = initial_evaluation
        self.flush_timeout = flush_timeout
        self._handle: RunHandle | None = None
        self._epoch_started = time.perf_counter()
        self._stop_logged = False
        self._first_epoch = True

    def __enter__(self) -> SweeplabCallback:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """A fit inside the `with` that has not ended its run raised (or never finished): end it
        failed now, with the exception, rather than when the server finds it silent."""
        handle = self._handle
        if handle is None or handle.ended or self._bound is not None:  # a program: its exit status tells
            return
        reason = f"model.fit raised {kind.__name__}: {exc}" if kind is not None else "model.fit did not finish"
        try:
            uploader = uploader_for(self.url, self.token)
            uploader.end(handle, ExternalEnding.FAILED, reason[:10_000])
            uploader.flush(handle.last_seq, self.flush_timeout)
        except Exception as error:  # never hide the fit's own exception
            log.warning("sweeplab: could not end the run: %s", error)

    @property
    def run_id(self) -> int | None:
        """The id of the current (or last) fit's run, once the server has answered."""
        return self._handle.run_id if self._handle else None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._bound is not None:  # not caught: a program that cannot bind or resume must fail, not train wrong
            self._handle = self._bound.begin(self.model, self.checkpoint)
            self._stop_logged, self._first_epoch = False, True
            return
        try:
            self._begin()
        except Exception as exc:  # tracking must never break training
            log.warning("sweeplab: this fit is not tracked: %s", exc)
            self._handle = None

    def _begin(self) -> None:
        uploader = uploader_for(self.url, self.token)
        create = {"sweep": self.sweep, "config": self.config, "seed": self.seed, "study": self.study,
                  "dataset": self.dataset, "epochs": int((self.params or {}).get("epochs") or 0),
                  "client_token": uuid.uuid4().hex, "host": f"{socket.gethostname()} pid {os.getpid()}"[:200]}
        if provenance := run_provenance(self.seed):
            create["provenance"] = provenance
        handle = RunHandle()
        self._handle, self._stop_logged, self._first_epoch = handle, False, True
        install_sigterm_handler()
        uploader.watch(handle)
        uploader.put("create", handle, create)

    def _initial_metrics(self, handle: RunHandle) -> dict[str, float | str | None]:
        """Epoch 0: the untrained model on the validation data (val_*) and on the training data,
        as sweeplab's workers do."""
        out: dict[str, Any] = {}
        if self.validation_data is not None:
            out.update({f"val_{k}": v for k, v in self._evaluate(self.validation_data, handle).items()})
        if self.training_data is not None:
            out.update(self._evaluate(self.training_data, handle))
        return clean_logs(out)

    def _evaluate(self, data: Any, handle: RunHandle) -> dict[str, Any]:
        progress = [_Progress(handle)]
        try:
            if isinstance(data, tuple | list):
                x, y, sw = (*data, None, None)[:3]
                if not _is_array(x):
                    return {}
                result = self.model.evaluate(x, y, sample_weight=sw, batch_size=EVAL_BATCH, verbose=0,
                                             return_dict=True, callbacks=progress)
            elif inspect.isgenerator(data) or (hasattr(data, "__next__") and not hasattr(data, "__len__")):
                return {}  # a one-shot iterator: evaluating it would eat fit's data
            else:
                result = self.model.evaluate(data, verbose=0, return_dict=True, callbacks=progress)
        except Exception as exc:
            log.warning("sweeplab: no epoch-0 evaluation: %s", exc)
            return {}
        return dict(result) if isinstance(result, Mapping) else {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        handle = self._handle
        if handle is not None:
            handle.touch()
            if self._first_epoch:  # fit's first epoch: 0 unless it resumes (initial_epoch)
                self._first_epoch = False
                self._log_epoch_zero(handle, epoch)
        self._epoch_started = time.perf_counter()

    def _log_epoch_zero(self, handle: RunHandle, first_epoch: int) -> None:
        if not self.initial_evaluation or first_epoch != 0:
            return
        try:
            metrics = self._initial_metrics(handle)
            if metrics:
                self._put_epoch(handle, {"epoch": 0, "metrics": metrics, "seconds": 0.0})
        except Exception as exc:  # tracking must never break training
            log.warning("sweeplab: epoch 0 not logged: %s", exc)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._handle is not None:
            self._handle.touch()  # keeps the heartbeats going: the fit is alive

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._handle is not None:
            self._handle.touch()  # fit's validation pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        handle = self._handle
        if handle is None:
            return
        handle.touch()
        try:
            body = {"epoch": epoch + 1, "metrics": clean_logs(logs),
                    "seconds": time.perf_counter() - self._epoch_started}
            self._put_epoch(handle, body)
            if handle.cancel_requested and self.model is not None:
                self.model.stop_training = True
                if not self._stop_logged:
                    self._stop_logged = True
                    log.warning("sweeplab: run %s was cancelled from sweeplab; stopping training", handle.run_id)
        except Exception as exc:
            log.warning("sweeplab: epoch %d not logged: %s", epoch + 1, exc)

    def _put_epoch(self, handle: RunHandle, body: dict[str, Any]) -> None:
        if self._bound is not None:
            self._bound.epoch(handle, body, self.model)
        else:
            uploader_for(self.url, self.token).put("epoch", handle, body)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        handle = self._handle
        if handle is None:
            return
        if self._bound is not None:
            handle.ended = True
            self._bound.close()
            return
        try:
            uploader = uploader_for(self.url, self.token)
            uploader.end(handle, ExternalEnding.SUCCEEDED)
            if not uploader.flush(handle.last_seq, self.flush_timeout):
                log.warning("sweeplab: %s has not taken this run's epochs yet; still retrying in the background",
                            self.url)
        except Exception as exc:
            log.warning("sweeplab: could not finish the run: %s", exc)

