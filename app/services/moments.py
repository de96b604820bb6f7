"""Mean, sample std, min, max and n of grouped values, computed in the database.

The variance is two-pass (the sum of squared deviations from the group's mean, read in a second
pass), never E[x^2] - E[x]^2: that difference cancels catastrophically when replicates agree (to
1e-9, say) and then depends on the order the database sums in. Every chart, table and the index
page's best config read their spreads from here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import CTE, Select, and_, func, select


def grouped_moments(values: CTE, groups: Sequence[str]) -> Select[Any]:
    """Per group of VALUES (a CTE with the GROUPS columns and a value column `v`), ordered by the
    groups: the GROUPS columns, then n, mean, min, max and `squares` (for `sample_std`)."""
    keys = [values.c[g] for g in groups]
    means = select(*keys, func.avg(values.c.v).label("m")).group_by(*keys).cte(f"{values.name}_means")
    dev = values.c.v - means.c.m
    return (select(*keys, func.count(values.c.v).label("n"), means.c.m.label("mean"),
                   func.min(values.c.v).label("lo"), func.max(values.c.v).label("hi"),
                   func.sum(dev * dev).label("squares"))
            .join(means, and_(*(means.c[g] == values.c[g] for g in groups)))
            .group_by(*keys, means.c.m)
            .order_by(*keys))


def sample_std(n: int, squares: float | None) -> float | None:
    """The sample standard deviation (n - 1 degrees of freedom); None below two values."""
    return math.sqrt(max(squares, 0.0) / (n - 1)) if n >= 2 and squares is not None else None
