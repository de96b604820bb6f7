"""A search's progress: each config in the order the planner made it, its mean final metric over its
succeeded replicates (app.services.finals), and the best mean so far. Columnar, for the sweep page's
"best so far against configs tried" chart; any sweep answers (a grid's configs in grid order)."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, select

from app.db import read_session
from app.metrics import PRIMARY_KEY, describe
from app.models import Config
from app.services.finals import final_values
from app.services.sweeps import get_sweep_row


def search_progress(engine: Engine, sweep_id: int, metric: str | None = None) -> dict[str, Any]:
    """{"metric", "higher_is_better", "positions", "labels", "values", "n", "best_so_far", "best_position"}:
    per config (position order) its mean final METRIC (None while none of its runs succeeded or none
    gave a real number) and the best such mean among it and the configs made before it. METRIC
    defaults to the race's, the pruner's, then the primary metric."""
    sweep = get_sweep_row(engine, sweep_id)
    spec = sweep.spec if isinstance(sweep.spec, dict) else {}
    if metric is None:
        chosen = [(spec.get(k) or {}).get("metric") for k in ("race", "prune") if isinstance(spec.get(k), dict)]
        metric = next((m for m in chosen if isinstance(m, str)), PRIMARY_KEY)
    higher = describe(metric).higher_is_better
    with read_session(engine) as s:
        configs = s.execute(select(Config.id, Config.position, Config.label).where(Config.sweep_id == sweep_id)
                            .order_by(Config.position)).all()
    finals = final_values(engine, sweep_id=sweep_id, key=metric)
    positions, labels, values, counts, best, best_at = [], [], [], [], [], []
    current: float | None = None
    current_at: int | None = None
    for config_id, position, label in configs:
        xs = [v for _, _, v in finals.get(config_id, []) if v is not None and math.isfinite(v)]
        mean = sum(xs) / len(xs) if xs else None
        if mean is not None and (current is None or (mean < current if higher is False else mean > current)):
            current, current_at = mean, position
        positions.append(position)
        labels.append(label)
        values.append(mean)
        counts.append(len(xs))
        best.append(current)
        best_at.append(current_at)
    return {"metric": metric, "higher_is_better": higher, "positions": positions, "labels": labels,
            "values": values, "n": counts, "best_so_far": best, "best_position": best_at}
