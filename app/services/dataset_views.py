"""What the dataset page and its API show of a dataset: its shape, classes and counts, and pages
of examples (images as 0-255 pixels). The server only reads datasets from its data directory
(app.datasets); it never downloads one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.datasets import DatasetInfo, DatasetUnavailable, ImageData, class_names, describe, load, locate
from app.errors import NotFound

MAX_IMAGES = 100


def _dataset(name: str, data_dir: Path) -> tuple[DatasetInfo, ImageData]:
    """The dataset from the server's data directory, or NotFound saying what to put where."""
    if locate(name, data_dir) is None:
        raise NotFound(f"dataset {name!r} is not on this server: no {Path(data_dir) / (name + '.npz')}. "
                       f"Put {name}.npz (keys x_train, y_train, x_test, y_test) in SWEEPLAB_DATA_DIR.")
    try:
        return describe(name, data_dir), load(name, data_dir)
    except DatasetUnavailable as exc:
        raise NotFound(str(exc)) from None


def dataset_summary(name: str, data_dir: Path) -> dict[str, Any]:
    """What the dataset is (input shape, images or vectors, dtype, class count and names) and the
    number of examples of each class in train and test."""
    info, data = _dataset(name, data_dir)
    out: dict[str, Any] = {"name": name, "class_names": class_names(name, info.classes), "classes": info.classes,
                           "shape": list(info.input_shape), "kind": "images" if info.images else "vectors",
                           "dtype": info.dtype}
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        counts = np.bincount(y.astype(np.int64), minlength=info.classes)
        out[split] = {"n": len(y), "counts": [int(c) for c in counts]}
    return out


def display_pixels(x: np.ndarray) -> np.ndarray:
    """Images as 0-255 integers: uint8 as stored; floats in [0, 1] times 255; other floats stretched
    from each image's own minimum to its maximum."""
    if x.dtype == np.uint8:
        return x
    values = np.nan_to_num(x.astype(np.float64))
    if len(values) == 0 or (values.min() >= 0 and values.max() <= 1):
        return np.rint(values * 255).astype(np.uint8)
    axes = tuple(range(1, values.ndim))
    low, high = values.min(axis=axes, keepdims=True), values.max(axis=axes, keepdims=True)
    stretched: np.ndarray = np.rint(255 * (values - low) / np.where(high > low, high - low, 1)).astype(np.uint8)
    return stretched


def dataset_images(name: str, data_dir: Path, split: str, start: int, count: int) -> dict[str, Any]:
    """Examples START..START+COUNT of a split with their labels. Images as 0-255 pixels, each one flat
    row; `shape` is (H, W) for one channel and (H, W, C) for colour (rows then hold H*W*C values). A
    dataset of flat feature vectors answers no images."""
    info, data = _dataset(name, data_dir)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    stop = max(start, min(len(y), start + min(count, MAX_IMAGES)))
    shape, pixels = list(info.input_shape), x[start:stop]
    if len(shape) == 3 and shape[2] != 3:  # one channel, or channels that are no colours: shown grey
        pixels = pixels[..., 0] if shape[2] == 1 else pixels.mean(axis=-1).astype(pixels.dtype)
        shape = shape[:2]
    images = [row.tolist() for row in display_pixels(pixels).reshape(stop - start, -1)] if info.images else []
    return {"name": name, "split": split, "start": start, "shape": shape,
            "kind": "images" if info.images else "vectors", "class_names": class_names(name, info.classes),
            "labels": [int(v) for v in y[start:stop]], "images": images}
