"""The rule every list of values a user gives a sweep follows (a grid axis, a search's `choice`):
numbers are finite, and no value is listed twice (compared as JSON, so [8] and [8.0] differ as
the spec stores them)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any


def check_listed_values(values: Iterable[Any], where: str = "") -> None:
    """Raise ValueError (its message starting with WHERE) on a non-finite number or a repeated value."""
    seen = set()
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where}{v} is not a finite number")
        key = json.dumps(v, sort_keys=True)
        if key in seen:
            raise ValueError(f"{where}value {v!r} is listed twice")
        seen.add(key)
