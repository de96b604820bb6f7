"""The process-wide cache of chart answers (curves, tables and their JSON).

Each answer is kept with the version it holds for (what it was computed from: a snapshot of run
states, a generation number), and a reader says which version it needs. That is what
functools.lru_cache cannot do, and it is what lets the curves be recomputed for the configs that
changed only: `peek` hands back the old answer and the version it was made from.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    """A small LRU of answers, each with its version. Keys start with the engine's URL: one
    process may serve several databases (tests do)."""

    def __init__(self, size: int = 512) -> None:
        self.size, self.items, self.lock = size, OrderedDict[Any, tuple[Any, Any]](), threading.Lock()

    def peek(self, key: Any) -> tuple[Any, Any] | None:
        """(version, answer) as stored under KEY, whatever its version, or None."""
        with self.lock:
            return self.items.get(key)

    def put(self, key: Any, version: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = (version, value)
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def get(self, key: Any, version: Any, compute: Callable[[], T]) -> T:
        """The answer under KEY if it was made for VERSION, else COMPUTE's (then stored)."""
        hit = self.peek(key)
        if hit is not None and hit[0] == version:
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        self.put(key, version, value)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


memo = Memo()


def dumps(value: Any) -> bytes:
    """Compact JSON; NaN or inf in an answer is a bug (app.numbers.finite_or_none), not a token."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
