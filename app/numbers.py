"""Numbers as sweeplab hands them out: JSON has no NaN or infinity, so a value that is not a real
number (a diverged loss, a metric that was never measured) is answered as null."""

from __future__ import annotations

import math


def finite_or_none(value: float | None) -> float | None:
    """VALUE when it is a real number, else None (NaN, inf and None alike)."""
    return value if value is not None and math.isfinite(value) else None
