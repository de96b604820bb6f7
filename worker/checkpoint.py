"""Canonical trainer states to bytes and back (numpy .npz, no pickle)."""

from __future__ import annotations

import io

import numpy as np

from worker.trainer import State


def dump_state(state: State) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **state)  # type: ignore[arg-type]
    return buf.getvalue()


def load_state(blob: bytes) -> State:
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
