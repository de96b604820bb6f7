"""What a failed pack's error says to the user (a run's error text), and which errors are running
out of memory (those send each run of the pack back to the queue to train alone)."""

from __future__ import annotations

from app.datasets import DatasetUnavailable
from worker.trainer import ModelBuildError


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or TensorFlow's ResourceExhaustedError (known by name: no TF import here)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, MemoryError) or "ResourceExhaustedError" in names or "OOM when allocating" in str(exc)


def readable_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    if is_out_of_memory(exc) or "OOM" in text:
        return f"out of memory while training ({name}): {text} — try a smaller pack size or model"
    if isinstance(exc, (DatasetUnavailable, ModelBuildError)):
        return text
    return f"training failed: {name}: {text}"
