"""Loading the image datasets (numpy only, so the server can use it without TensorFlow).

Search order for a dataset NAME: `<data_dir>/<NAME>.npz` (keys x_train, y_train, x_test, y_test);
for fashion_mnist also Debian's IDX files in /usr/share/datasets/fashion-mnist; then Keras' own
downloader (online users only; imported lazily).
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion_mnist")
DOWNLOAD_HOST = "storage.googleapis.com"
_reachable_checked: list[float] = [-1e9, 0.0]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}


class DatasetUnavailable(Exception):
    """The dataset is nowhere to be found (offline and not in the data directory)."""


@dataclass(frozen=True)
class ImageData:
    """Raw uint8 images (N, 28, 28) and integer labels (N,), as Keras' load_data() returns them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def limited(self, train: int | None, test: int | None) -> ImageData:
        return ImageData(self.x_train[:train], self.y_train[:train], self.x_test[:test], self.y_test[:test])


def locate(name: str, data_dir: Path) -> Path | None:
    """The local file that holds NAME, or None when only a download could supply it."""
    npz = Path(data_dir) / f"{name}.npz"
    if npz.is_file():
        return npz
    if name == "fashion_mnist" and (DEBIAN_FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        return DEBIAN_FASHION_DIR
    return None


def _keras_cache_has(name: str) -> bool:
    home = Path.home() / ".keras" / "datasets"
    return (home / "mnist.npz").is_file() if name == "mnist" else (home / "fashion-mnist").is_dir()


def _download_host_reachable(timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((DOWNLOAD_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_available(name: str, data_dir: Path) -> str | None:
    """A readable reason why NAME cannot be loaded here, or None if it can (or may be downloaded)."""
    if name not in DATASETS:
        return f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}"
    if locate(name, data_dir) is not None or _keras_cache_has(name):
        return None
    now = time.monotonic()
    if now - _reachable_checked[0] > 60:
        _reachable_checked[:] = [now, float(_download_host_reachable())]
    if _reachable_checked[1]:
        return None
    return (
        f"dataset {name!r} is not available: no {Path(data_dir) / (name + '.npz')} and Keras cannot "
        f"download it (offline). Set SWEEPLAB_DATA_DIR to a folder holding {name}.npz."
    )


_cache: dict[tuple[str, str], ImageData] = {}
_lock = threading.Lock()


def load(name: str, data_dir: Path) -> ImageData:
    """Load NAME (cached per process)."""
    if name not in DATASETS:
        raise DatasetUnavailable(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    key = (name, str(Path(data_dir).resolve()))
    with _lock:
        if key not in _cache:
            _cache[key] = _load_uncached(name, Path(data_dir))
        return _cache[key]


def _load_uncached(name: str, data_dir: Path) -> ImageData:
    found = locate(name, data_dir)
    if found is not None and found.suffix == ".npz":
        try:
            with np.load(found) as f:
                return ImageData(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
        except (KeyError, ValueError, OSError) as exc:
            raise DatasetUnavailable(f"{found} is not a valid dataset file: {exc}") from exc
    if found is not None:
        return _load_idx_dir(found)
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
    )


def _download_with_keras(name: str, data_dir: Path) -> ImageData:
    """Keras' own loader: downloads once into ~/.keras/datasets for users who are online."""
    try:
        import keras  # heavy, and only needed here

        module = keras.datasets.mnist if name == "mnist" else keras.datasets.fashion_mnist
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
    return ImageData(xt, yt, xs, ys)
