"""Where a worker keeps TensorFlow's compiled programs (worker.main.xla_cache_dir)."""

from __future__ import annotations

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
