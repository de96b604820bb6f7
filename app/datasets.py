"""Datasets (numpy only, so the server can use it without TensorFlow): the built-ins and any
`<name>.npz` in the data folder.

A dataset NAME is `<data_dir>/<NAME>.npz` with arrays x_train, y_train, x_test, y_test: inputs as
flat feature vectors (N, F) or images (N, H, W) or (N, H, W, C), channels last, of dtype uint8
(scaled to [0, 1] for training) or float (taken as they are); integer labels (N,) or (N, 1), the
class count being the largest label + 1. The built-ins (mnist, fashion_mnist, cifar10) may also
come from Debian's IDX files (fashion_mnist) or Keras' own downloader (online users only).

What the server needs of a file (shapes, dtypes, label range) it reads from the .npy headers and
the labels only, once per version of the file (its mtime and size), never the inputs.
"""

from __future__ import annotations

import gzip
import re
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BUILTIN = ("mnist", "fashion_mnist", "cifar10")
KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1000
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DOWNLOAD_HOST = "storage.googleapis.com"
_reachable_checked: list[float] = [-1e9, 0.0]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# What a built-in is when it still has to be downloaded: (input shape, classes).
BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist": ((28, 28), 10), "fashion_mnist": ((28, 28), 10), "cifar10": ((32, 32, 3), 10)}
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
HOW_TO = "a NAME.npz in SWEEPLAB_DATA_DIR with arrays x_train, y_train, x_test, y_test"


class DatasetUnavailable(Exception):
    """The dataset cannot be used: nowhere to be found (offline, not in the data folder) or malformed."""


def class_names(name: str, classes: int) -> list[str]:
    """A built-in's class names; a file's classes are named by their labels 0..classes-1."""
    return CLASS_NAMES.get(name, [str(i) for i in range(classes)])


@dataclass(frozen=True)
class ImageData:
    """Inputs as stored (uint8 or float), integer labels (N,), and the class count (0: from the labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.classes:
            top = max(int(self.y_train.max(initial=0)), int(self.y_test.max(initial=0)))
            object.__setattr__(self, "classes", top + 1)

    def limited(self, train: int | None, test: int | None) -> ImageData:
        """The first TRAIN and TEST examples; the class count stays the whole dataset's."""
        return ImageData(self.x_train[:train], self.y_train[:train], self.x_test[:test], self.y_test[:test],
                         self.classes)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, without its inputs: the shape of one example, the class count, the counts of
    training and test examples (None for a built-in still to be downloaded), the inputs' dtype."""

    name: str
    input_shape: tuple[int, ...]
    classes: int
    train: int | None
    test: int | None
    dtype: str
    path: Path | None

    @property
    def images(self) -> bool:
        """Images (H, W) or (H, W, C), not flat feature vectors."""
        return len(self.input_shape) >= 2


def locate(name: str, data_dir: Path) -> Path | None:
    """The local file that holds NAME, or None when only a download could supply it."""
    if not NAME.fullmatch(name):
        return None
    npz = Path(data_dir) / f"{name}.npz"
    if npz.is_file():
        return npz
    if name == "fashion_mnist" and (DEBIAN_FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        return DEBIAN_FASHION_DIR
    return None


def available(data_dir: Path) -> list[str]:
    """The built-ins, then the names of the data folder's .npz files (not checked here)."""
    try:
        found = sorted(p.stem for p in Path(data_dir).glob("*.npz") if NAME.fullmatch(p.stem))
    except OSError:
        found = []
    return [*BUILTIN, *(n for n in found if n not in BUILTIN)]


def _keras_cache_has(name: str) -> bool:
    home = Path.home() / ".keras" / "datasets"
    wanted = {"mnist": home / "mnist.npz", "fashion_mnist": home / "fashion-mnist",
              "cifar10": home / "cifar-10-batches-py"}
    return wanted[name].exists() if name in wanted else False


def _download_host_reachable(timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((DOWNLOAD_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _downloadable(name: str) -> bool:
    if _keras_cache_has(name):
        return True
    now = time.monotonic()
    if now - _reachable_checked[0] > 60:
        _reachable_checked[:] = [now, float(_download_host_reachable())]
    return bool(_reachable_checked[1])


def _not_found(name: str, data_dir: Path) -> str:
    if name in BUILTIN:
        return (f"dataset {name!r} is not available: no {Path(data_dir) / (name + '.npz')} and Keras cannot "
                f"download it (offline). Set SWEEPLAB_DATA_DIR to a folder holding {name}.npz.")
    return (f"unknown dataset {name!r}: no {Path(data_dir) / (name + '.npz')}; the built-ins are "
            f"{', '.join(BUILTIN)}, and any other dataset is {HOW_TO}")


# ---- reading a file's description cheaply, once per version of the file

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


# ---- loading (workers, and the server's dataset page for the built-ins' IDX files)

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
