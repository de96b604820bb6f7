"""Broken entries of TensorFlow's persistent XLA compilation cache, found and removed.

TensorFlow writes an entry (tensorflow/compiler/jit/xla_compilation_cache.proto's
XlaSerializedCacheEntry: key = 1, hlo_module = 2, executable = 3, each length-delimited) straight
into its file, not through a temporary one. A worker killed mid-write, or a disk that fills up,
leaves a truncated file, and TensorFlow then fails every later compile of that program in every
process that shares the folder ("OutOfRangeError: Read less bytes than requested"; a failed load is
remembered for the process's life, so it cannot be retried in place). Each worker therefore checks
the folder when it starts and removes what is not a whole entry (drop_broken_entries): the program
is compiled again and rewritten.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("sweeplab.worker")

ENTRY_FIELDS = {1, 2, 3}  # key, hlo_module, executable


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


def drop_broken_entries(folder: Path) -> list[str]:
    """Remove FOLDER's cache entries that are not whole (complete_entry); the names removed. A file
    another worker is writing right now may be removed too: that worker's program still runs, only
    its copy on disk is lost."""
    removed = []
    for path in sorted(folder.glob("*.pb")):
        try:
            with path.open("rb") as f:  # a few bytes read per entry, not its megabytes
                whole = _complete(f, os.fstat(f.fileno()).st_size)
            if not whole:
                path.unlink()
                removed.append(path.name)
        except OSError as exc:  # gone already, or unreadable: leave it to TensorFlow
            log.debug("XLA cache entry %s: %s", path.name, exc)
    if removed:
        log.warning("removed %d broken XLA cache entr%s from %s (written by a process that died, or on a "
                    "full disk): %s", len(removed), "y" if len(removed) == 1 else "ies", folder, ", ".join(removed))
    return removed
