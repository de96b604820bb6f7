"""SweeplabCallback: track any Keras `model.fit` in sweeplab with one line.

    model.fit(x, y, epochs=5, validation_data=(xv, yv),
              callbacks=[SweeplabCallback(url="http://127.0.0.1:8000", sweep="my study",
                                          config={"hidden": [32], "optimizer": "adam"}, seed=i)])

Each fit becomes a run of the external sweep named `sweep` (created on first use); runs with equal
`config` dicts are replicates of one config, so the dashboard shows their bands and tests.

Delivery never blocks or breaks training: sweeplab.delivery posts from a background thread,
keeps posts in memory while the server is away, drops one it refuses, sends heartbeats while fit
runs, and ends the run when fit raises, the process gets SIGTERM or Python exits. A process
killed outright (SIGKILL, out of memory) says nothing: the server ends its run once it is silent
for SWEEPLAB_EXTERNAL_STALE_SECONDS ("the client stopped reporting").
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
import threading
import time
import uuid
from collections.abc import Mapping
from types import FrameType
from typing import Any

import keras

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
        self._handle: RunHandle | None = None
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
        uploader = uploader_for(self.url, self.token)
        fit = _find_fit(self.model)
        fit_locals = dict(fit.f_locals) if fit is not None else {}
        create = {"sweep": self.sweep, "config": self.config, "seed": self.seed, "study": self.study,
                  "dataset": self.dataset, "epochs": int((self.params or {}).get("epochs") or 0),
                  "client_token": uuid.uuid4().hex, "host": f"{socket.gethostname()} pid {os.getpid()}"[:200]}
        handle = RunHandle()
        handle.fit_frame, handle.thread_id = fit, threading.get_ident()
        self._handle, self._stop_logged = handle, False
        install_sigterm_handler()
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
            uploader_for(self.url, self.token).put("epoch", handle, body)
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
            uploader = uploader_for(self.url, self.token)
            uploader.end(handle, "succeeded")
            if not uploader.flush(handle.last_seq, self.flush_timeout):
                log.warning("sweeplab: %s has not taken this run's epochs yet; still retrying in the background",
                            self.url)
        except Exception as exc:
            log.warning("sweeplab: could not finish the run: %s", exc)

