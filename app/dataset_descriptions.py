"""What a dataset is (shape of one example, classes, counts, dtype), checked, without reading its
inputs: a file's .npy headers and its labels only, once per version of the file (its mtime and size).

The server describes datasets at submit and on its pages; DatasetUnavailable says what is wrong with
a file. Re-exported by app.datasets, the one import path of datasets.
"""

from __future__ import annotations

import gzip
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from app.dataset_catalog import (
    BUILTIN,
    BUILTIN_SHAPES,
    HOW_TO,
    KEYS,
    MAX_CLASSES,
    NAME,
    DatasetInfo,
    DatasetUnavailable,
    _downloadable,
    _not_found,
    locate,
)

_info_cache: dict[Path, tuple[tuple[int, int], DatasetInfo | str]] = {}
_info_lock = threading.Lock()


def _version(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _npy_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Each array's shape and dtype from its .npy header (the archive's members are read no further)."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            key = member.filename.removesuffix(".npy")
            if key not in KEYS:
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read(f)
            out[key] = (tuple(int(n) for n in shape), np.dtype(dtype))
    return out


def _labels(path: Path, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        labels: np.ndarray = f[key]
    return labels


def _describe_npz(name: str, path: Path) -> DatasetInfo:
    """The checks a dataset file must pass (DatasetUnavailable says which failed) and what it is."""
    where = f"dataset {name!r} ({path})"
    try:
        headers = _npy_headers(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        reason = f"{where} is not a valid .npz file ({str(exc)[:200]}); a dataset is {HOW_TO}"
        raise DatasetUnavailable(reason) from None
    missing = [k for k in KEYS if k not in headers]
    if missing:
        raise DatasetUnavailable(f"{where} lacks {', '.join(missing)}; a dataset is {HOW_TO}")
    (xt, xt_type), (xs, xs_type) = headers["x_train"], headers["x_test"]
    for key in ("x_train", "x_test"):
        shape, dtype = headers[key]
        if not 2 <= len(shape) <= 4:
            raise DatasetUnavailable(f"{where}: {key} has shape {shape}; give flat vectors (N, F) or images "
                                     f"(N, H, W) or (N, H, W, C), channels last")
        if any(n < 1 for n in shape):
            raise DatasetUnavailable(f"{where}: {key} has shape {shape}; every dimension must be at least 1")
        if dtype != np.uint8 and dtype.kind != "f":
            raise DatasetUnavailable(f"{where}: {key} has dtype {dtype}; give uint8 (scaled to [0, 1] for "
                                     f"training) or a float type (taken as it is)")
    if xt[1:] != xs[1:]:
        raise DatasetUnavailable(f"{where}: x_train's examples have shape {xt[1:]} but x_test's {xs[1:]}")
    if xt_type != xs_type:
        raise DatasetUnavailable(f"{where}: x_train has dtype {xt_type} but x_test {xs_type}")
    top = -1
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        (x_shape, _), (y_shape, y_type) = headers[x_key], headers[y_key]
        if y_type.kind not in "iu" or not (len(y_shape) == 1 or (len(y_shape) == 2 and y_shape[1] == 1)):
            raise DatasetUnavailable(f"{where}: {y_key} has shape {y_shape} and dtype {y_type}; give integer "
                                     f"labels, shape (N,) or (N, 1)")
        if y_shape[0] != x_shape[0]:
            raise DatasetUnavailable(f"{where}: {x_key} has {x_shape[0]} examples but {y_key} {y_shape[0]} labels")
        labels = _labels(path, y_key)
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise DatasetUnavailable(f"{where}: {y_key} has the label {low}; labels are 0, 1, ... (class numbers)")
        top = max(top, high)
    if top + 1 > MAX_CLASSES:
        raise DatasetUnavailable(f"{where}: the largest label is {top}; at most {MAX_CLASSES} classes are supported")
    if name in BUILTIN_SHAPES and top + 1 > BUILTIN_SHAPES[name][1]:
        raise DatasetUnavailable(f"{where}: the largest label is {top}, but {name} has {BUILTIN_SHAPES[name][1]} "
                                 f"classes")
    classes = BUILTIN_SHAPES[name][1] if name in BUILTIN_SHAPES else top + 1
    if classes < 2:
        raise DatasetUnavailable(f"{where}: every label is {top}; a dataset needs at least two classes")
    return DatasetInfo(name, xt[1:], classes, xt[0], xs[0], str(xt_type), path)


def _idx_count(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        head = f.read(8)
    return int.from_bytes(head[4:8], "big")


def describe(name: str, data_dir: Path) -> DatasetInfo:
    """What NAME is (shape, classes, counts), checked; DatasetUnavailable says why it cannot be used.
    A file is read once per version (mtime and size): its headers and labels, not its inputs."""
    if not NAME.fullmatch(name):
        raise DatasetUnavailable(f"{name!r} is not a dataset name: letters, digits, _, . and -, at most 100")
    found = locate(name, data_dir)
    if found is None:
        if name in BUILTIN and _downloadable(name):
            shape, classes = BUILTIN_SHAPES[name]
            return DatasetInfo(name, shape, classes, None, None, "uint8", None)
        raise DatasetUnavailable(_not_found(name, data_dir))
    if found.is_dir():  # Debian's fashion-mnist
        return DatasetInfo(name, (28, 28), 10, _idx_count(found / "train-labels-idx1-ubyte.gz"),
                           _idx_count(found / "t10k-labels-idx1-ubyte.gz"), "uint8", found)
    version = _version(found)
    with _info_lock:
        cached = _info_cache.get(found)
        if cached is None or cached[0] != version:
            try:
                described: DatasetInfo | str = _describe_npz(name, found)
            except DatasetUnavailable as exc:
                described = str(exc)
            _info_cache[found] = cached = (version, described)
    if isinstance(cached[1], str):
        raise DatasetUnavailable(cached[1])
    return cached[1]


def check_available(name: str, data_dir: Path) -> str | None:
    """A readable reason why NAME cannot be trained on here, or None if it can (or may be downloaded)."""
    try:
        describe(name, data_dir)
    except DatasetUnavailable as exc:
        return str(exc)
    return None
