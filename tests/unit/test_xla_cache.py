"""Where a worker keeps TensorFlow's compiled programs (worker.main.xla_cache_dir) and how workers
share them without reading an entry another is still writing (worker.xla_cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    assert sorted(p.name for p in folder.glob("*.pb")) == ["whole.pb"]
    own = Path(os.environ["TF_XLA_FLAGS"].split("--tf_xla_persistent_cache_directory=")[1].split()[0])
    assert own.parent == folder / ".workers" and str(os.getpid()) in own.name  # TensorFlow's folder: its own
    assert sorted(p.name for p in own.iterdir()) == ["whole.pb"]  # with the whole entries shared
    assert (own / "whole.pb").read_bytes() == whole


def test_sync_moves_only_whole_entries_and_never_overwrites(tmp_path: Path) -> None:
    """What one worker compiled reaches the others whole (published under a temporary name, then
    renamed) and an entry another worker is still writing (torn) is not taken in: TensorFlow, which
    reads only the own folder, would fail that program for the process's life."""
    from worker.xla_cache import CacheFolder

    whole = _field(1, b"k" * 9) + _field(2, b"h" * 50) + _field(3, b"x" * 60)
    first, second = CacheFolder(tmp_path), CacheFolder(tmp_path)
    first.open(), second.open()
    (first.own / "compiled-here.pb").write_bytes(whole)  # as TensorFlow leaves one it compiled
    (first.own / "being-written.pb").write_bytes(whole[:40])  # TensorFlow still writing (or killed)
    assert first.sync() == (1, 0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["compiled-here.pb"]
    (tmp_path / "torn.pb").write_bytes(whole[:-5])  # another worker's write in progress
    assert second.sync() == (0, 1)
    assert sorted(p.name for p in second.own.iterdir()) == ["compiled-here.pb"]
    assert (second.own / "compiled-here.pb").read_bytes() == whole
    (tmp_path / "torn.pb").write_bytes(whole)  # its writer finished
    (second.own / "compiled-here.pb").unlink()
    (second.own / "compiled-here.pb").write_bytes(whole[:1] + b"different")  # never overwrites the shared one
    assert second.sync() == (0, 1)
    assert (tmp_path / "compiled-here.pb").read_bytes() == whole
    assert (second.own / "torn.pb").read_bytes() == whole
    assert not [p for p in tmp_path.rglob("*.tmp")]
    first.close()
    assert not first.own.exists() and second.own.exists()
    old = 8 * 24 * 3600
    os.utime(second.own, (second.own.stat().st_atime - old, second.own.stat().st_mtime - old))
    second.sync()  # a sync marks the folder as a live worker's
    CacheFolder(tmp_path).open()
    assert second.own.is_dir()


def test_an_entry_that_cannot_be_placed_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from worker import xla_cache

    whole = _field(1, b"k") + _field(2, b"h") + _field(3, b"x")
    folder = xla_cache.CacheFolder(tmp_path)
    folder.open()
    for name in ("a.pb", "b.pb", "c.pb"):
        (folder.own / name).write_bytes(whole)
    placed = xla_cache._place

    def disk_full_for_b(source: Path, target: Path) -> bool:
        if source.name == "b.pb":
            raise OSError(28, "No space left on device")
        return placed(source, target)

    monkeypatch.setattr(xla_cache, "_place", disk_full_for_b)
    assert folder.sync() == (2, 0)
    assert sorted(p.name for p in tmp_path.glob("*.pb")) == ["a.pb", "c.pb"]
    assert "1 failed, first b.pb" in caplog.text


def test_own_folders_of_gone_workers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    from worker.xla_cache import CacheFolder

    live = CacheFolder(tmp_path)
    live.open()
    gone = tmp_path / ".workers" / f"{live.host}-{_dead_pid()}-abc123"
    gone.mkdir()
    (gone / "unpublished.pb").write_bytes(b"x")
    other_host = tmp_path / ".workers" / f"elsewhere-{os.getpid()}-abc123"
    other_host.mkdir()
    CacheFolder(tmp_path).open()
    assert live.own.is_dir() and other_host.is_dir() and not gone.exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


CACHED_PROGRAM = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from app.config import Settings
    from worker import xla_cache
    from worker.main import configure_tensorflow, xla_cache_dir
    settings = Settings(artifacts_dir=Path(sys.argv[1]), tf_threads=0)
    configure_tensorflow(settings)
    shared = xla_cache_dir(settings)
    torn = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    if torn:  # another worker starts writing this program's entry after this one started
        (shared / torn.name).write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    xla_cache.sync()  # as Worker.step does before each pack
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def program(x):
        return tf.reduce_sum(tf.tanh(x) * 3.0)

    print("SHARED", shared)
    print("RESULT", float(program(tf.ones([8, 8]))))
""")


def _run_cached_program(artifacts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", CACHED_PROGRAM, str(artifacts), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_workers_share_compiled_programs_and_one_being_written_fails_nothing(tmp_path: Path) -> None:
    """Real TensorFlow, three worker processes one after another. The first compiles a program and
    publishes its entry; with that entry torn in the shared folder (a second worker writing it as
    this one starts: TensorFlow fails the load, "Read less bytes than requested", when it reads the
    shared folder itself, as workers did) the program still runs; with it whole, a third worker
    loads it instead of compiling (its copy is not rewritten)."""
    pytest.importorskip("tensorflow")
    artifacts = tmp_path / "artifacts"
    first = _run_cached_program(artifacts)
    assert "RESULT" in first.stdout, first.stderr[-2000:]
    shared = Path(first.stdout.split("SHARED ")[1].split()[0])  # named by the worker's own XLA_FLAGS
    entries = sorted(shared.glob("*.pb"))
    assert entries, "the first worker published nothing"
    assert not list((shared / ".workers").iterdir())  # its own folder went with it
    saved = tmp_path / "saved"
    saved.mkdir()
    for entry in entries:
        entry.rename(saved / entry.name)
    for entry in sorted(saved.iterdir()):
        torn = _run_cached_program(artifacts, str(entry))
        assert "RESULT" in torn.stdout and torn.returncode == 0, torn.stderr[-2000:]
        assert torn.stdout.split("RESULT")[1] == first.stdout.split("RESULT")[1]
        (shared / entry.name).unlink()
    for entry in sorted(saved.iterdir()):
        entry.rename(shared / entry.name)
    before = {p.name: p.stat().st_mtime_ns for p in shared.glob("*.pb")}
    third = _run_cached_program(artifacts)
    assert "RESULT" in third.stdout, third.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in shared.glob("*.pb")} == before  # loaded: nothing rewritten
