"""Where and how a pack trains: versions, dataset hash, host, CPU, GPU, trainer kind (the fields of
`app.services.provenance`). What stays the same for the life of the process is gathered once; each
dataset file is hashed once per process (streamed, cached by path, mtime and size).

This module knows no SQL: `worker.runner` records what it gathers through the queue. Gathering
never fails training: a probe that raises answers "unknown". TensorFlow is never imported here:
its version and GPUs are read from the module a trainer already imported, else from the installed
package's metadata (and no GPU is reported for a trainer that never loaded TensorFlow).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from app.config import Settings
from app.datasets import locate
from app.machine import UNKNOWN, machine_facts, safely
from app.spec import TrainSpec

NO_GPU = "none"
PACKED_KIND = "keras_packed"
CHUNK_BYTES = 1 << 20
_hashes: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_hash_lock = threading.Lock()


def gpu_names() -> str:
    """The GPUs TensorFlow sees (their device names, comma-separated), or NO_GPU. Only asked of a
    TensorFlow that a trainer already imported."""
    tf: Any = sys.modules.get("tensorflow")
    if tf is None:
        return NO_GPU
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device) or {}
        except Exception:  # details are best effort
            details = {}
        names.append(str(details.get("device_name") or device.name))
    return ", ".join(names) if names else NO_GPU


@functools.cache
def _gpu(tf_loaded: bool) -> str:
    return safely(gpu_names) if tf_loaded else NO_GPU


def process_facts() -> dict[str, str]:
    """Versions, host, CPU (app.machine) and GPU of this process, gathered once (a copy)."""
    return {**machine_facts(), "gpu": _gpu("tensorflow" in sys.modules)}


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]


def file_sha256(path: Path) -> str:
    """The sha256 of the file at PATH, or of a folder's files (their bytes in name order), streamed
    and computed once per process for each (path, mtime, size)."""
    files = _files_of(path)
    stamp = tuple((p.name, (st := p.stat()).st_mtime_ns, st.st_size) for p in files)
    key = (str(path.resolve()), stamp)
    with _hash_lock:  # packs of one dataset on parallel threads hash it once
        if key not in _hashes:
            digest = hashlib.sha256()
            for p in files:
                with open(p, "rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        digest.update(chunk)
            _hashes[key] = digest.hexdigest()
        return _hashes[key]


def keras_cache_path(name: str) -> Path | None:
    """Where Keras' downloader keeps NAME (app.datasets falls back to it when online)."""
    home = Path(os.path.expanduser("~")) / ".keras" / "datasets"
    path = home / "mnist.npz" if name == "mnist" else home / "fashion-mnist"
    return path if path.exists() else None


def dataset_sha256(name: str, data_dir: Path) -> str:
    """The sha256 of the file a trainer loads NAME from (app.datasets' search order), or UNKNOWN."""
    found = locate(name, data_dir) or keras_cache_path(name)
    if found is None:
        return UNKNOWN
    return safely(lambda: file_sha256(found))


def trainer_kind(trainer: object) -> str:
    """The kind of TRAINER: its `trainer_kind` attribute if it has one, else the name of its class's
    module in worker/ ("keras_packed", "keras_single", "fake" for fake_trainer). Asked of the trainer,
    not the factory: one factory may choose packed or single per config."""
    kind = getattr(trainer, "trainer_kind", None)
    if isinstance(kind, str):
        return kind
    module = type(trainer).__module__ or UNKNOWN
    return module.rsplit(".", 1)[-1].removesuffix("_trainer")


def pack_provenance(spec: TrainSpec, settings: Settings, trainer: object, seeds: list[int]) -> list[dict[str, Any]]:
    """One record per seed of a pack about to train: the process's facts, the dataset's name and
    hash, the trainer kind, whether it trains packed and how many runs the pack holds."""
    kind = trainer_kind(trainer)
    shared: dict[str, Any] = {
        **process_facts(),
        "dataset": spec.dataset,
        "dataset_sha256": dataset_sha256(spec.dataset, Path(settings.data_dir)),
        "trainer": kind,
        "packed": kind == PACKED_KIND,
        "pack_size": len(seeds),
    }
    return [{"seed": seed, **shared} for seed in seeds]


def program_provenance(name: str, path: Path, seed: int, dataset: str | None, settings: Settings) -> dict[str, Any]:
    """The record of one run of a training program (worker.programs): the process's facts (the
    program runs on this worker's Python and packages), the program's name and its file's sha256,
    the dataset's hash when its config names one; never packed. For `record_provenance`."""
    record: dict[str, Any] = {"seed": seed, **process_facts()}
    if dataset:
        record |= {"dataset": dataset, "dataset_sha256": dataset_sha256(dataset, Path(settings.data_dir))}
    return record | {"trainer": "program", "program": name, "program_sha256": safely(lambda: file_sha256(path)),
                     "packed": False, "pack_size": 1}
