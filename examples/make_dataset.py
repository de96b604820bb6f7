"""Write a dataset sweeplab can train on: any NAME.npz in SWEEPLAB_DATA_DIR with arrays x_train,
y_train, x_test, y_test is the dataset NAME.

    python examples/make_dataset.py sweeplab-data/datasets/blobs.npz

This one is "blobs": 16x16 grey images (uint8, so sweeplab scales them to [0, 1]) of noise with a
bright 4x4 square whose place is the class (3 classes), 600 for training and 150 for testing.
Inputs may be flat feature vectors (N, F) or images (N, H, W) or (N, H, W, C), channels last;
uint8 or float (floats are taken as they are); labels are integers 0..classes-1, shape (N,) or (N, 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make(n: int, rng: np.random.Generator, classes: int = 3, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """N images of SIZE x SIZE x 1 and their labels: class k lights the square at (2 + 4k, 2 + 4k)."""
    y = rng.integers(0, classes, n)
    x = rng.uniform(0, 60, (n, size, size, 1))
    for i, k in enumerate(y):
        x[i, 2 + 4 * k: 6 + 4 * k, 2 + 4 * k: 6 + 4 * k, 0] += 190
    return x.astype(np.uint8), y.astype(np.int64)


def write(path: Path, train: int = 600, test: int = 150, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x_train, y_train = make(train, rng)
    x_test, y_test = make(test, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("sweeplab-data/datasets/blobs.npz"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.path, args.train, args.test, args.seed)
    print(f"wrote {args.path}: dataset {args.path.stem!r} (16x16x1 images, 3 classes)")


if __name__ == "__main__":
    main()
