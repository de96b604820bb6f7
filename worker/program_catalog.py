"""The catalogue of training programs a worker offers: each `<name>.py` in its programs folder
(scan_programs), held thread-safe and rescanned with every heartbeat (ProgramCatalog).
Re-exported by worker.programs."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from app.spec import PROGRAM_NAME

log = logging.getLogger("sweeplab.worker")

SUFFIX = ".py"


def scan_programs(folder: Path | None) -> dict[str, Path]:
    """The programs in FOLDER: {name: path} for each `<name>.py` file whose name is a valid
    program name (app.spec.PROGRAM_NAME); nothing when FOLDER is unset or unreadable."""
    if folder is None:
        return {}
    found: dict[str, Path] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name.removesuffix(SUFFIX)
                if entry.name.endswith(SUFFIX) and PROGRAM_NAME.fullmatch(name) and entry.is_file():
                    found[name] = Path(entry.path)
    except OSError as exc:
        log.warning("programs folder %s cannot be read: %s", folder, exc)
        return {}
    return found


class ProgramCatalog:
    """The programs this worker offers now (thread-safe; `rescan` reads the folder again)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._lock = threading.Lock()
        self._programs: dict[str, Path] = {}
        self.rescan()

    def rescan(self) -> list[str]:
        found = scan_programs(self.folder)
        with self._lock:
            if sorted(found) != sorted(self._programs):
                log.info("programs offered: %s", ", ".join(sorted(found)) or "none")
            self._programs = found
        return sorted(found)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._programs)

    def path(self, name: str) -> Path | None:
        """The program's file, if this worker still offers it and it is still there."""
        with self._lock:
            path = self._programs.get(name)
        return path if path is not None and path.is_file() else None
