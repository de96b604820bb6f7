"""SweeplabCallback inside a training program that a worker runs (worker.programs): the fit binds
to the worker's run through the local channel in $SWEEPLAB_WORKER_CHANNEL (worker.channel) and
reports each epoch there; the worker stores it, fenced by its lease. No server address, token or
network is needed, and nothing here talks HTTP.

With checkpoint=True every epoch carries the model's weights and its optimizer's state (numpy
.npz: `w/{i}` for model.weights[i], `opt/{i}` for model.optimizer.variables[i]), stored with the
epoch's metrics in one transaction; a run claimed again after its worker or program died gets the
last one back at bind: the weights and optimizer state are restored and the fit continues after
that epoch (Keras' own resume, as keras.callbacks.BackupAndRestore does), so no epoch is trained
twice into the record.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import keras
import numpy as np

from sweeplab.delivery import RunHandle
from worker.channel import CHANNEL_ENV, ChannelClient, ChannelError, decode_blob, encode_blob

log = logging.getLogger("sweeplab.callback")


def model_state(model: Any) -> bytes:
    """The model's weights and (once built) its optimizer's variables as .npz bytes."""
    arrays = {f"w/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.weights)}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        arrays |= {f"opt/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _assign(variables: list[Any], saved: dict[str, np.ndarray], prefix: str, what: str) -> None:
    keys = [f"{prefix}{i}" for i in range(len(variables))]
    if len(saved) != len(variables) or any(k not in saved for k in keys):
        raise ValueError(f"the checkpoint does not fit this model: {len(saved)} {what} saved, the model has "
                         f"{len(variables)}")
    for key, variable in zip(keys, variables, strict=True):
        if tuple(saved[key].shape) != tuple(variable.shape):
            raise ValueError(f"the checkpoint does not fit this model: {what} {key} has shape "
                             f"{tuple(saved[key].shape)}, the model's {tuple(variable.shape)}")
    for key, variable in zip(keys, variables, strict=True):
        variable.assign(saved[key])


def restore_state(model: Any, blob: bytes) -> None:
    """Put a model_state back: weights, and the optimizer's variables if they were saved."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    _assign(list(model.weights), {k: v for k, v in arrays.items() if k.startswith("w/")}, "w/", "weights")
    saved_opt = {k: v for k, v in arrays.items() if k.startswith("opt/")}
    if saved_opt:
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        _assign(list(optimizer.variables), saved_opt, "opt/", "optimizer variables")


class BoundRun:
    """One fit's run, reported through the worker that runs this program."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoint = False
        self._client: ChannelClient | None = None

    @classmethod
    def from_env(cls) -> BoundRun | None:
        """The worker's channel, when this process is a program a worker runs."""
        path = os.environ.get(CHANNEL_ENV)
        return cls(path) if path else None

    def begin(self, model: Any, checkpoint: bool) -> RunHandle:
        """Bind to the run; restore the checkpoint the worker hands back, if any, and make the fit
        start after its epoch. Raises if binding or restoring fails: a program that cannot report,
        or would train from the wrong weights, should fail loudly."""
        self.close()
        self.checkpoint = checkpoint
        self._client = ChannelClient(self.path)
        answer = self._client.call("bind", checkpoint=checkpoint, pid=os.getpid())
        handle = RunHandle()
        handle.run_id = int(answer["run_id"])
        resume = answer.get("resume")
        if resume:
            restore_state(model, decode_blob(resume["state"]))
            model._initial_epoch = int(resume["epoch"])  # Keras' own resume hook (BackupAndRestore's)
            log.info("sweeplab: run %d resumes after epoch %d from its checkpoint", handle.run_id, resume["epoch"])
        return handle

    def epoch(self, handle: RunHandle, body: dict[str, Any], model: Any) -> None:
        """Report one epoch (with the checkpoint when asked); a stop asked by the worker (cancel, or
        the run is no longer its) sets handle.cancel_requested."""
        if self._client is None:
            return
        state = encode_blob(model_state(model)) if self.checkpoint and model is not None else None
        try:
            answer = self._client.call("epoch", **body, state=state)
        except ChannelError as exc:
            log.warning("sweeplab: epoch %s not stored: %s", body.get("epoch"), exc)
            handle.cancel_requested = handle.cancel_requested or exc.stop
            return
        handle.cancel_requested = handle.cancel_requested or bool(answer.get("stop"))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
