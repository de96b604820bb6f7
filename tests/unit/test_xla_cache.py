"""Where a worker keeps TensorFlow's compiled programs (worker.main.xla_cache_dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import Settings
from worker.main import xla_cache_dir


def test_the_cache_folder_names_the_installed_tensorflow_whatever_its_distribution(tmp_path: Path) -> None:
    """One folder per TensorFlow version: a program compiled by another version is never loaded.
    The version comes from the package metadata of any TensorFlow distribution (here often
    tensorflow-cpu, which the folder used to miss: every version shared "tf-unknown")."""
    tf = pytest.importorskip("tensorflow")
    folder = xla_cache_dir(Settings(artifacts_dir=tmp_path))
    assert folder.parent == tmp_path / "xla-cache"
    assert folder.name.startswith(f"tf-{tf.__version__}-")


def test_other_xla_flags_get_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(artifacts_dir=tmp_path)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    plain = xla_cache_dir(settings)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false --xla_cpu_use_xnnpack=true")
    assert xla_cache_dir(settings) != plain
    assert xla_cache_dir(settings).parent == plain.parent


def test_the_workers_xla_defaults_are_added_unless_the_user_named_the_flag() -> None:
    from worker.main import XLA_CHEAP_LLVM, XLA_NO_EIGEN_THREADS, xla_flags

    assert xla_flags("", gpu=False).split() == [XLA_NO_EIGEN_THREADS, XLA_CHEAP_LLVM]
    assert xla_flags("", gpu=True).split() == [XLA_NO_EIGEN_THREADS]  # LLVM's passes stay on a GPU's
    mine = "--xla_dump_to=/tmp/d --xla_llvm_disable_expensive_passes=false --xla_cpu_multi_thread_eigen=true"
    assert xla_flags(mine, gpu=False) == mine  # the user's own values win, nothing is added twice
    assert xla_flags(xla_flags("--xla_dump_to=/tmp/d", gpu=False), gpu=False).split() == [
        "--xla_dump_to=/tmp/d", XLA_NO_EIGEN_THREADS, XLA_CHEAP_LLVM]


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here stay under 128 bytes: one-byte lengths)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_broken_cache_entries_are_removed_and_whole_ones_kept(tmp_path: Path) -> None:
    """Entries as TensorFlow writes them (XlaSerializedCacheEntry: key 1, hlo_module 2, executable
    3); truncated anywhere, or without an executable, an entry fails its program in every worker
    ("Read less bytes than requested"), so it goes."""
    from worker.xla_cache import complete_entry, drop_broken_entries

    whole = _field(1, b"\x08\x07" + b"k" * 20) + _field(2, b"h" * 90) + _field(3, b"x" * 100)
    assert complete_entry(whole)
    broken = {
        "half.pb": whole[: len(whole) // 2],  # inside the HLO module
        "no-executable.pb": whole[: len(_field(1, b"\x08\x07" + b"k" * 20) + _field(2, b"h" * 90))],
        "empty-executable.pb": whole[: -102] + _field(3, b""),
        "one-byte-short.pb": whole[:-1],
        "empty.pb": b"",
    }
    for name, data in broken.items():
        assert not complete_entry(data), name
        (tmp_path / name).write_bytes(data)
    (tmp_path / "whole.pb").write_bytes(whole)
    (tmp_path / "notes.txt").write_bytes(b"not an entry")  # not the cache's: left alone
    assert drop_broken_entries(tmp_path) == sorted(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "whole.pb"]
    assert drop_broken_entries(tmp_path) == []


def test_a_worker_removes_broken_entries_as_it_configures_tensorflow(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.main import configure_tensorflow, nvidia_gpu_present, xla_flags

    monkeypatch.setenv("XLA_FLAGS", xla_flags("", nvidia_gpu_present()))  # as configure_tensorflow leaves it
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings(artifacts_dir=tmp_path, tf_threads=0)  # no threads to set: TensorFlow is not imported
    folder = xla_cache_dir(settings)
    folder.mkdir(parents=True)
    whole = _field(1, b"k") + _field(2, b"h") + _field(3, b"x")
    (folder / "whole.pb").write_bytes(whole)
    (folder / "truncated.pb").write_bytes(whole[:-2])
    configure_tensorflow(settings)
    assert sorted(p.name for p in folder.iterdir()) == ["whole.pb"]
    assert f"--tf_xla_persistent_cache_directory={folder}" in os.environ["TF_XLA_FLAGS"]
