"""Which datasets there are and where each is found: the built-ins and any `<name>.npz` in the data
folder, the file format, the class names, and the types a dataset is described (DatasetInfo) and
loaded (ImageData) as. Numpy only, so the server can use it without TensorFlow.

A dataset NAME is `<data_dir>/<NAME>.npz` with arrays x_train, y_train, x_test, y_test (HOW_TO; the
checks are app.dataset_descriptions'). The built-ins (mnist, fashion_mnist, cifar10) may also come
from Debian's IDX files (fashion_mnist) or Keras' own downloader (online users only), which this
module only asks whether it could reach. Re-exported by app.datasets, the one import path of datasets.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

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

