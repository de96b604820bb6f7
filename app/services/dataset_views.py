"""What the dataset page and its API show of a dataset: class counts and pages of raw images.
The server only reads datasets from its data directory (app.datasets); it never downloads one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.datasets import CLASS_NAMES, DATASETS, DatasetUnavailable, ImageData, load, locate
from app.errors import NotFound

MAX_IMAGES = 100


def _dataset(name: str, data_dir: Path) -> ImageData:
    """The dataset from the server's data directory, or NotFound saying what to put where."""
    if name not in DATASETS:
        raise NotFound(f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}")
    if locate(name, data_dir) is None:
        raise NotFound(f"dataset {name!r} is not on this server: no {Path(data_dir) / (name + '.npz')}. "
                       f"Put {name}.npz (keys x_train, y_train, x_test, y_test) in SWEEPLAB_DATA_DIR.")
    try:
        return load(name, data_dir)
    except DatasetUnavailable as exc:
        raise NotFound(str(exc)) from None


def dataset_summary(name: str, data_dir: Path) -> dict[str, Any]:
    """Class names and the number of examples of each class in train and test."""
    data = _dataset(name, data_dir)
    out: dict[str, Any] = {"name": name, "class_names": CLASS_NAMES[name], "shape": list(data.x_train.shape[1:])}
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        counts = [int((y == k).sum()) for k in range(len(CLASS_NAMES[name]))]
        out[split] = {"n": len(y), "counts": counts}
    return out


def dataset_images(name: str, data_dir: Path, split: str, start: int, count: int) -> dict[str, Any]:
    """Images START..START+COUNT of a split as raw 0-255 pixels (each image one flat row) with labels."""
    data = _dataset(name, data_dir)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    stop = min(len(y), start + min(count, MAX_IMAGES))
    return {"name": name, "split": split, "start": start, "shape": list(x.shape[1:]),
            "class_names": CLASS_NAMES[name], "labels": [int(v) for v in y[start:stop]],
            "images": [row.tolist() for row in x[start:stop].reshape(stop - start if stop > start else 0, -1)]}
