"""What a worker stores besides metrics: sample outputs, the confusion matrix, the model file.

The model file is written to a temp file in the artifacts folder and moved into place with
os.replace, so a reader never sees half a file and a failed save leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from worker.trainer import PreparedData, Trainer

OUTPUT_IMAGES = 10
Artifact = tuple[str, bytes]  # (content type, data)


def _json(obj: object) -> Artifact:
    return "application/json", json.dumps(obj).encode()


def outputs(trainer: Trainer, i: int, data: PreparedData) -> Artifact:
    """The network's outputs on the first test images."""
    x = data.x_test[:OUTPUT_IMAGES]
    out = trainer.predict(i, x)
    return _json({"indices": list(range(len(x))), "labels": data.y_test[: len(x)].tolist(),
                  "outputs": np.asarray(out, dtype=float).round(6).tolist()})


def confusion(trainer: Trainer, i: int, data: PreparedData) -> Artifact:
    """Counts of (true label, predicted label) over the test set: one row and column per class."""
    predicted = np.asarray(trainer.predict(i, data.x_test)).argmax(axis=1)
    matrix = np.zeros((data.classes, data.classes), dtype=int)
    np.add.at(matrix, (data.y_test, predicted), 1)
    return _json({"rows": "true label", "columns": "predicted label", "matrix": matrix.tolist()})


def model_path(folder: Path, run_id: int) -> Path:
    return folder / f"run-{run_id}.keras"


def write_model_file(trainer: Trainer, i: int, folder: Path, run_id: int) -> os.stat_result:
    """Save replicate I as run RUN_ID's .keras file; returns the file's stat, so that the writer can
    later remove the file only if it is still its own."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".run-{run_id}-", suffix=".keras")
    os.close(fd)
    try:
        trainer.save_keras(i, tmp)
        os.replace(tmp, model_path(folder, run_id))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return os.stat(model_path(folder, run_id))


def remove_model_file(folder: Path, run_id: int, written: os.stat_result) -> None:
    """Remove the .keras file this worker wrote, unless another writer has replaced it since."""
    path = model_path(folder, run_id)
    with contextlib.suppress(FileNotFoundError):
        now = os.stat(path)
        if (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
            path.unlink()
