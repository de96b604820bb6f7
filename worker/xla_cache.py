"""TensorFlow's persistent XLA compilation cache, shared by workers without a torn read.

TensorFlow writes an entry (tensorflow/compiler/jit/xla_compilation_cache.proto's
XlaSerializedCacheEntry: key = 1, hlo_module = 2, executable = 3, each length-delimited) straight
into its file, not through a temporary one (device_executable_persistor.h: WriteBinaryProto on the
final path, overwriting). A process that reads the file while another is still writing it, or one
a worker killed mid-write or a full disk left truncated, fails that program ("OutOfRangeError: Read
less bytes than requested"), and TensorFlow remembers a failed load for the process's life, so it
cannot be retried in place: every later pack of that shape in the worker would fail.

So TensorFlow never reads the shared folder. Each worker process gets a folder of its own inside it
(CacheFolder.own) and TensorFlow reads and writes only there. Whole entries cross between the two
by hard links (a copy where links are not supported), which appear at once with all their bytes:
`sync` publishes the entries this process compiled (link to a temporary name, then rename) and
takes in those others published, checking each is whole (complete_entry) first. The worker syncs
before and after each pack, never while one of its packs compiles. Entries already broken in the
shared folder (an older version's, or written by a TensorFlow configured by hand) are removed when
a worker starts (drop_broken_entries), as are own folders of workers that are gone.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("sweeplab.worker")

ENTRY_FIELDS = {1, 2, 3}  # key, hlo_module, executable
OWN_FOLDERS = ".workers"  # inside the shared folder: one folder per worker process
STALE_SECONDS = 7 * 24 * 3600  # another host's own folder untouched this long is a dead worker's


def _varint(f: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return value


def _complete(f: BinaryIO, size: int) -> bool:
    """Whether the SIZE bytes of F are a whole serialized entry: its top-level fields end exactly at
    its end, and it has its key, its HLO module and a non-empty executable. Only the fields' tags
    and lengths are read; their contents are skipped."""
    seen: dict[int, int] = {}
    try:
        while f.tell() < size:
            tag = _varint(f)
            field, wire = tag >> 3, tag & 7
            if wire != 2 or field not in ENTRY_FIELDS:  # every field of the entry is length-delimited
                return False
            length = _varint(f)
            if f.tell() + length > size:
                return False
            seen[field] = length
            f.seek(length, io.SEEK_CUR)
    except ValueError:
        return False
    return set(seen) == ENTRY_FIELDS and seen[3] > 0


def complete_entry(data: bytes) -> bool:
    """Whether DATA is a whole serialized entry (_complete)."""
    return _complete(io.BytesIO(data), len(data))


def _whole(path: Path) -> bool:
    """Whether the file at PATH is a whole serialized entry (_complete): a few bytes read, not its
    megabytes. OSError when it cannot be read."""
    with path.open("rb") as f:
        return _complete(f, os.fstat(f.fileno()).st_size)


def drop_broken_entries(folder: Path) -> list[str]:
    """Remove FOLDER's cache entries that are not whole (complete_entry); the names removed. A file
    another worker is writing right now may be removed too: that worker's program still runs, only
    its copy on disk is lost."""
    removed = []
    for path in sorted(folder.glob("*.pb")):
        try:
            if not _whole(path):
                path.unlink()
                removed.append(path.name)
        except OSError as exc:  # gone already, or unreadable: leave it to TensorFlow
            log.debug("XLA cache entry %s: %s", path.name, exc)
    if removed:
        log.warning("removed %d broken XLA cache entr%s from %s (written by a process that died, or on a "
                    "full disk): %s", len(removed), "y" if len(removed) == 1 else "ies", folder, ", ".join(removed))
    return removed


def _whole_file(path: Path) -> bool:
    """_whole, with an unreadable or vanished file taken as not whole."""
    try:
        return _whole(path)
    except OSError:
        return False


def _place(source: Path, target: Path) -> bool:
    """SOURCE's bytes at TARGET, all at once (a hard link, else a copy renamed into place), unless
    TARGET exists; whether it was placed."""
    if target.exists():
        return False
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            os.link(source, temporary)
        except OSError:  # links not supported here (or across these folders): a copy, then the rename
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)  # atomic: readers see no file or the whole one
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class CacheFolder:
    """The shared folder (SHARED) and this process's own inside it (own), where TensorFlow reads and
    writes; `sync` moves whole entries between them."""

    def __init__(self, shared: Path):
        self.shared = shared
        self.host = socket.gethostname()
        self.own = shared / OWN_FOLDERS / f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def open(self) -> Path:
        """Make the own folder, with every whole entry the shared folder has; its path."""
        self.shared.mkdir(parents=True, exist_ok=True)
        drop_broken_entries(self.shared)
        self._drop_stale_own_folders()
        self.own.mkdir(parents=True)
        self.sync()
        return self.own

    def sync(self) -> tuple[int, int]:
        """Publish the whole entries compiled here that the shared folder lacks, then take in those
        it has and the own folder lacks; how many each way. Failures are logged, never raised: a
        missed entry is only a compile more."""
        moved = {"out": 0, "in": 0}
        failed: list[str] = []

        def cross(sources: Path, targets: Path, way: str) -> None:
            for path in sorted(sources.glob("*.pb")):
                try:
                    if not (targets / path.name).exists() and _whole_file(path):
                        moved[way] += _place(path, targets / path.name)
                except OSError as exc:  # this entry only (a full disk, a vanished file): the rest go on
                    failed.append(f"{path.name}: {exc}")

        try:
            self.own.mkdir(parents=True, exist_ok=True)  # removed by hand, or as stale by mistake
            os.utime(self.own)  # a live worker's folder is never STALE_SECONDS old
            cross(self.own, self.shared, "out")
            cross(self.shared, self.own, "in")
        except OSError as exc:
            failed.append(str(exc))
        if failed:
            log.warning("XLA cache: syncing %s with %s: %d failed, first %s", self.own, self.shared, len(failed),
                        failed[0])
        return moved["out"], moved["in"]

    def close(self) -> None:
        """Publish what is left, then remove the own folder."""
        self.sync()
        shutil.rmtree(self.own, ignore_errors=True)

    def _drop_stale_own_folders(self) -> None:
        """Own folders of this host's processes that are gone, and any untouched for STALE_SECONDS
        (a worker SIGKILLed leaves its folder; what it had not published is compiled again)."""
        for folder in (self.shared / OWN_FOLDERS).glob("*"):
            host, _, rest = folder.name.rpartition("-")[0].rpartition("-")
            pid = int(rest) if rest.isdigit() else -1
            try:
                gone = host == self.host and pid > 0 and not _alive(pid)  # (os.kill(-1 or 0) is not one process)
                stale = gone or time.time() - folder.stat().st_mtime > STALE_SECONDS
            except OSError:
                continue
            if stale:
                shutil.rmtree(folder, ignore_errors=True)


_current: CacheFolder | None = None


def open_cache(shared: Path) -> Path:
    """This process's own folder of SHARED (CacheFolder.open), removed at exit after a last sync;
    the folder TensorFlow is to use."""
    global _current
    folder = CacheFolder(shared)
    own = folder.open()
    if _current is None:
        atexit.register(lambda: _current.close() if _current is not None else None)
    _current = folder
    return own


def sync() -> None:
    """This process's CacheFolder.sync, if it has one (open_cache)."""
    if _current is not None:
        _current.sync()
