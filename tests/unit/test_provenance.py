"""Provenance as pure functions: the attempts' records, distinct values, dataset hashes (streamed,
cached by path, mtime and size), the machine's facts and a pack's records."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from app import machine
from app.config import Settings
from app.services.provenance import MAX_EARLIER, distinct_values, with_earlier
from app.spec import TrainSpec
from worker import provenance
from worker.fake_trainer import FakeTrainer


def test_the_latest_attempt_is_on_top_and_earlier_ones_are_kept() -> None:
    first = {"host": "a", "attempt": 1, "gpu": "none"}
    assert with_earlier(None, first) == first
    second = with_earlier(first, {"host": "b", "attempt": 2, "gpu": "H100"})
    assert second == {"host": "b", "attempt": 2, "gpu": "H100", "earlier": [first]}
    # A retried write of the same attempt (its commit's answer was lost) keeps one record of it.
    assert with_earlier(second, {"host": "b", "attempt": 2, "gpu": "H100"}) == second
    third = with_earlier(second, {"host": "c", "attempt": 3})
    assert third["earlier"] == [first, {"host": "b", "attempt": 2, "gpu": "H100"}]
    assert "earlier" not in third["earlier"][1]  # records of earlier attempts hold no nesting


def test_only_the_last_earlier_attempts_are_kept() -> None:
    record: dict[str, object] | None = None
    for attempt in range(1, MAX_EARLIER + 5):
        record = with_earlier(record, {"attempt": attempt})
    assert record is not None
    earlier = record["earlier"]
    assert isinstance(earlier, list) and len(earlier) == MAX_EARLIER
    assert [e["attempt"] for e in earlier] == list(range(4, MAX_EARLIER + 4))  # 14 on top


def test_distinct_values_per_field() -> None:
    records = [
        {"tensorflow": "2.21.0", "packed": True, "pack_size": 10, "earlier": [{"host": "x"}]},
        {"tensorflow": "2.21.0", "packed": False, "pack_size": 1, "host": "b"},
        None,
        {"tensorflow": "2.20.0", "packed": True, "pack_size": 10, "host": "a", "seed": 1.5, "gpu": None},
        {"flag": 1}, {"flag": True},  # True == 1 in Python: both are kept, they are different JSON
    ]
    assert distinct_values(records) == {
        "flag": [True, 1], "host": ["a", "b"], "pack_size": [1, 10], "packed": [False, True], "seed": [1.5],
        "tensorflow": ["2.20.0", "2.21.0"],
    }
    assert distinct_values([]) == {}


def test_a_file_is_hashed_as_hashlib_does_and_once_per_version(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    content = os.urandom(3 * provenance.CHUNK_BYTES + 17)  # several chunks and a partial one
    path.write_bytes(content)
    assert provenance.file_sha256(path) == hashlib.sha256(content).hexdigest()
    # Same path, size and modification time: the cached hash, the file is not read again.
    stat = path.stat()
    path.write_bytes(bytes(len(content)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert provenance.file_sha256(path) == hashlib.sha256(content).hexdigest()
    # Another modification time: hashed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert provenance.file_sha256(path) == hashlib.sha256(bytes(len(content))).hexdigest()


def test_a_folder_is_hashed_as_its_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.gz").write_bytes(b"second")
    (tmp_path / "a.gz").write_bytes(b"first")
    (tmp_path / "sub").mkdir()
    assert provenance.file_sha256(tmp_path) == hashlib.sha256(b"firstsecond").hexdigest()


def test_the_dataset_hash_is_that_of_the_file_training_loads(data_dir: Path, tmp_path: Path) -> None:
    want = hashlib.sha256((data_dir / "mnist.npz").read_bytes()).hexdigest()
    assert provenance.dataset_sha256("mnist", data_dir) == want
    missing = provenance.dataset_sha256("mnist", tmp_path)
    cached = Path.home() / ".keras" / "datasets" / "mnist.npz"
    assert missing == (provenance.file_sha256(cached) if cached.is_file() else machine.UNKNOWN)


def test_the_machine_facts() -> None:
    facts = machine.machine_facts()
    assert facts["python"] == platform.python_version()
    assert facts["numpy"] == np.__version__
    assert facts["sweeplab"] == importlib.metadata.version("sweeplab")
    assert facts["host"] == socket.gethostname()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    assert facts["cpu"] == (found.group(1).strip() if found else platform.processor() or platform.machine())
    assert machine.package_version("no_such_module_here") == machine.NOT_INSTALLED
    facts["host"] = "changed"
    assert machine.machine_facts()["host"] == socket.gethostname()  # callers get a copy


def test_a_failing_probe_answers_unknown() -> None:
    def broken() -> str:
        raise OSError("no")

    assert machine.safely(broken) == machine.UNKNOWN


def fake(seeds: list[int]) -> FakeTrainer:
    return FakeTrainer(TrainSpec.model_validate({"model": {"hidden": [4]}}), seeds, None, [None] * len(seeds))


def test_the_trainer_kind() -> None:
    class Custom:
        trainer_kind = "my_program"

    assert provenance.trainer_kind(fake([0])) == "fake"
    assert provenance.trainer_kind(Custom()) == "my_program"


def test_a_packs_records(data_dir: Path) -> None:
    spec = TrainSpec.model_validate({"dataset": "mnist", "model": {"hidden": [4]}})
    settings = Settings(data_dir=data_dir, trainer="fake")
    records = provenance.pack_provenance(spec, settings, fake([7, 8]), [7, 8])
    assert [r["seed"] for r in records] == [7, 8]
    want_hash = hashlib.sha256((data_dir / "mnist.npz").read_bytes()).hexdigest()
    for record in records:
        assert {k: record[k] for k in ("dataset", "dataset_sha256", "trainer", "packed", "pack_size")} == {
            "dataset": "mnist", "dataset_sha256": want_hash, "trainer": "fake", "packed": False, "pack_size": 2}
        assert {k: record[k] for k in machine.machine_facts()} == machine.machine_facts()
        assert record["gpu"] == (provenance.gpu_names() if "tensorflow" in sys.modules else provenance.NO_GPU)


@pytest.mark.parametrize("kind", ["keras_packed", "keras_single"])
def test_packed_is_said_of_the_packed_trainer_only(kind: str, data_dir: Path) -> None:
    class Kind:
        trainer_kind = kind

    spec = TrainSpec.model_validate({"model": {"hidden": [4]}})
    (record,) = provenance.pack_provenance(spec, Settings(data_dir=data_dir), Kind(), [0])
    assert record["packed"] is (kind == "keras_packed")


def test_a_record_holds_the_fields_in_their_order(data_dir: Path) -> None:
    from app.services.provenance import ATTEMPT, FIELDS

    spec = TrainSpec.model_validate({"model": {"hidden": [4]}})
    (record,) = provenance.pack_provenance(spec, Settings(data_dir=data_dir), fake([1]), [1])
    assert [*record, ATTEMPT] == list(FIELDS)  # the queue adds the attempt


def test_a_programs_record(tmp_path: Path, data_dir: Path) -> None:
    script = tmp_path / "fit.py"
    script.write_text("print('training')\n")
    record = provenance.program_provenance("fit", script, 4, "mnist", Settings(data_dir=data_dir))
    assert {k: record[k] for k in ("seed", "trainer", "program", "program_sha256", "packed", "pack_size",
                                   "dataset_sha256")} == {
        "seed": 4, "trainer": "program", "program": "fit", "program_sha256": sha(script), "packed": False,
        "pack_size": 1, "dataset_sha256": sha(data_dir / "mnist.npz")}
    assert "dataset" not in provenance.program_provenance("fit", script, 4, None, Settings(data_dir=data_dir))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
