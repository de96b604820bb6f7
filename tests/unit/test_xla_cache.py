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
