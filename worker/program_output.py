"""A training program's output as the worker keeps it: the last characters of its stdout and
stderr together and of its stderr alone (OutputTail), fed from its pipes by reader threads (_pump).
Re-exported by worker.programs."""

from __future__ import annotations

import codecs
import os
import threading
from collections import deque
from typing import IO

MAX_OUTPUT_CHARS = 64 * 1024  # runs.output: the last this many characters of stdout and stderr
STDERR_KEEP_CHARS = 16 * 1024
ERROR_TAIL_LINES = 20  # runs.error of a failed program: the last lines of its stderr ...
ERROR_TAIL_CHARS = 2000  # ... at most this long
READ_BYTES = 65_536


class OutputTail:
    """The last MAX_OUTPUT_CHARS of a program's stdout and stderr together, in the order the
    pieces arrived, and the last STDERR_KEEP_CHARS of its stderr alone. Text as both databases
    store it (NUL replaced)."""

    def __init__(self, limit: int = MAX_OUTPUT_CHARS):
        self.limit = limit
        self._lock = threading.Lock()
        self._pieces: deque[str] = deque()
        self._size = 0
        self._stderr = ""
        self.version = 0  # grows with every piece: the runner saves only when it changed

    def add(self, text: str, stderr: bool) -> None:
        if not text:
            return
        text = text.replace("\x00", "\ufffd")
        with self._lock:
            self._pieces.append(text)
            self._size += len(text)
            while self._size - len(self._pieces[0]) >= self.limit:
                self._size -= len(self._pieces.popleft())
            if stderr:
                self._stderr = (self._stderr + text)[-STDERR_KEEP_CHARS:]
            self.version += 1

    def note(self, line: str) -> None:
        """A line of the worker's own, in the output (marked so)."""
        self.add(f"[sweeplab worker] {line}\n", stderr=False)

    def text(self) -> str:
        with self._lock:
            return "".join(self._pieces)[-self.limit:]

    def stderr_tail(self) -> str:
        with self._lock:
            lines = self._stderr.rstrip("\n").splitlines()[-ERROR_TAIL_LINES:]
        return "\n".join(lines)[-ERROR_TAIL_CHARS:]


def _pump(pipe: IO[bytes], tail: OutputTail, stderr: bool) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = pipe.fileno()
    try:
        while chunk := os.read(fd, READ_BYTES):
            tail.add(decoder.decode(chunk), stderr)
    except OSError:
        pass
    finally:
        tail.add(decoder.decode(b"", final=True), stderr)
        pipe.close()
