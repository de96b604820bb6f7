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

import logging
from pathlib import Path

log = logging.getLogger("sweeplab.worker")

ENTRY_FIELDS = {1, 2, 3}  # key, hlo_module, executable


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def complete_entry(data: bytes) -> bool:
    """Whether DATA is a whole serialized entry: its top-level fields end exactly at its end, and it
    has its key, its HLO module and a non-empty executable."""
    seen: dict[int, int] = {}
    i = 0
    try:
        while i < len(data):
            tag, i = _varint(data, i)
            field, wire = tag >> 3, tag & 7
            if wire != 2 or field not in ENTRY_FIELDS:  # every field of the entry is length-delimited
                return False
            size, i = _varint(data, i)
            if i + size > len(data):
                return False
            seen[field] = size
            i += size
    except ValueError:
        return False
    return set(seen) == ENTRY_FIELDS and seen[3] > 0


def drop_broken_entries(folder: Path) -> list[str]:
    """Remove FOLDER's cache entries that are not whole (complete_entry); the names removed. A file
    another worker is writing right now may be removed too: that worker's program still runs, only
    its copy on disk is lost."""
    removed = []
    for path in sorted(folder.glob("*.pb")):
        try:
            whole = complete_entry(path.read_bytes())
            if not whole:
                path.unlink()
                removed.append(path.name)
        except OSError as exc:  # gone already, or unreadable: leave it to TensorFlow
            log.debug("XLA cache entry %s: %s", path.name, exc)
    if removed:
        log.warning("removed %d broken XLA cache entr%s from %s (written by a process that died, or on a "
                    "full disk): %s", len(removed), "y" if len(removed) == 1 else "ies", folder, ", ".join(removed))
    return removed
