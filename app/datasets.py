"""Datasets (numpy only, so the server can use it without TensorFlow): the built-ins and any
`<name>.npz` in the data folder.

A dataset NAME is `<data_dir>/<NAME>.npz` with arrays x_train, y_train, x_test, y_test: inputs as
flat feature vectors (N, F) or images (N, H, W) or (N, H, W, C), channels last, of dtype uint8
(scaled to [0, 1] for training) or float (taken as they are); integer labels (N,) or (N, 1), the
class count being the largest label + 1. The built-ins (mnist, fashion_mnist, cifar10) may also
come from Debian's IDX files (fashion_mnist) or Keras' own downloader (online users only).

What the server needs of a file (shapes, dtypes, label range) it reads from the .npy headers and
the labels only, once per version of the file (its mtime and size), never the inputs.

This module loads datasets (workers, and the server's dataset page for the built-ins' IDX files)
and is the one import path of datasets: the catalog (names, where a dataset is found, the types)
is app.dataset_catalog's, the cheap checked descriptions app.dataset_descriptions', both
re-exported here. `_download_with_keras` stays here and is looked up here at each load, so a test
that replaces `app.datasets._download_with_keras` takes effect.
"""

from __future__ import annotations

import gzip
import threading
import zipfile
from pathlib import Path

import numpy as np

from app.dataset_catalog import (
    BUILTIN,
    BUILTIN_SHAPES,
    CLASS_NAMES,
    DEBIAN_FASHION_DIR,
    DOWNLOAD_HOST,
    HOW_TO,
    KEYS,
    MAX_CLASSES,
    NAME,
    DatasetInfo,
    DatasetUnavailable,
    ImageData,
    _not_found,
    available,
    class_names,
    locate,
)
from app.dataset_catalog import _keras_cache_has as _keras_cache_has
from app.dataset_catalog import _reachable_checked as _reachable_checked
from app.dataset_descriptions import _version, check_available, describe

__all__ = [
    "BUILTIN",
    "BUILTIN_SHAPES",
    "CLASS_NAMES",
    "DEBIAN_FASHION_DIR",
    "DOWNLOAD_HOST",
    "HOW_TO",
    "KEYS",
    "MAX_CLASSES",
    "MAX_LOADED",
    "NAME",
    "DatasetInfo",
    "DatasetUnavailable",
    "ImageData",
    "available",
    "check_available",
    "class_names",
    "describe",
    "load",
    "locate",
]

MAX_LOADED = 3  # datasets a process keeps in memory
_cache: dict[tuple[str, str], tuple[tuple[int, int] | None, ImageData]] = {}
_lock = threading.Lock()


def load(name: str, data_dir: Path) -> ImageData:
    """Load NAME (cached per process, until its file changes)."""
    key = (name, str(Path(data_dir).resolve()))
    found = locate(name, data_dir)
    version = _version(found) if found is not None and found.is_file() else None
    with _lock:
        held = _cache.get(key)
        if held is None or held[0] != version:
            _cache.pop(key, None)
            while len(_cache) >= MAX_LOADED:
                _cache.pop(next(iter(_cache)))
            _cache[key] = (version, _load_uncached(name, Path(data_dir), found))
        return _cache[key][1]


def _load_uncached(name: str, data_dir: Path, found: Path | None) -> ImageData:
    if found is not None and found.suffix == ".npz":
        info = describe(name, data_dir)
        try:
            with np.load(found, allow_pickle=False) as f:
                arrays = [f[k] for k in KEYS]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DatasetUnavailable(f"{found} is not a valid dataset file: {exc}") from exc
        xt, yt, xs, ys = arrays
        return ImageData(xt, yt.reshape(-1), xs, ys.reshape(-1), info.classes)
    if found is not None:
        return _load_idx_dir(found)
    if name not in BUILTIN:
        raise DatasetUnavailable(_not_found(name, data_dir))
    return _download_with_keras(name, data_dir)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_idx_dir(folder: Path) -> ImageData:
    return ImageData(
        _read_idx(folder / "train-images-idx3-ubyte.gz"),
        _read_idx(folder / "train-labels-idx1-ubyte.gz"),
        _read_idx(folder / "t10k-images-idx3-ubyte.gz"),
        _read_idx(folder / "t10k-labels-idx1-ubyte.gz"),
        10,
    )


def _download_with_keras(name: str, data_dir: Path) -> ImageData:
    """Keras' own loader: downloads once into ~/.keras/datasets for users who are online."""
    try:
        import keras  # heavy, and only needed here

        module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
                  "cifar10": keras.datasets.cifar10}[name]
        (xt, yt), (xs, ys) = module.load_data()
    except ImportError as exc:
        raise DatasetUnavailable(
            f"dataset {name!r} not found in {data_dir} and Keras is not installed to download it"
        ) from exc
    except Exception as exc:  # network errors come in many types
        raise DatasetUnavailable(
            f"dataset {name!r} not found: no {data_dir / (name + '.npz')} and the download failed "
            f"({type(exc).__name__}: {str(exc)[:200]}). Put {name}.npz (keys x_train, y_train, x_test, y_test) "
            f"in SWEEPLAB_DATA_DIR or go online once."
        ) from exc
    return ImageData(xt, yt.reshape(-1), xs, ys.reshape(-1), BUILTIN_SHAPES[name][1])
