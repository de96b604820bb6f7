"""Data behind the charts: per-run series of a sweep, and the stream of epochs since a cursor."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, func, select

from app.db import read_session
from app.models import Config, Metric, Run
from app.services.sweeps import get_sweep_row


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def sweep_configs(engine: Engine, sweep_id: int) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        rows = s.execute(select(Config.id, Config.position, Config.label, Config.params)
                         .where(Config.sweep_id == sweep_id).order_by(Config.position)).all()
    return [{"id": r.id, "position": r.position, "label": r.label, "params": r.params} for r in rows]


def sweep_run_series(engine: Engine, sweep_id: int, keys: list[str]) -> dict[str, Any]:
    """Every run's series for KEYS, columnar, with the cursor to stream from."""
    get_sweep_row(engine, sweep_id)
    with read_session(engine) as s:
        runs = s.execute(select(Run.id, Run.config_id, Run.seed, Run.status)
                         .where(Run.sweep_id == sweep_id).order_by(Run.id)).all()
        cursor = s.scalar(select(func.max(Metric.id))) or 0
        rows = s.execute(
            select(Metric.run_id, Metric.key, Metric.epoch, Metric.value)
            .join(Run, Run.id == Metric.run_id)
            .where(Run.sweep_id == sweep_id, Metric.key.in_(keys), Metric.id <= cursor)
            .order_by(Metric.run_id, Metric.key, Metric.epoch)
        ).all()
    out: dict[int, dict[str, Any]] = {
        r.id: {"run_id": r.id, "config_id": r.config_id, "seed": r.seed, "status": r.status,
               "series": {k: {"epochs": [], "values": []} for k in keys}}
        for r in runs
    }
    for run_id, key, epoch, value in rows:
        sr = out[run_id]["series"][key]
        sr["epochs"].append(epoch)
        sr["values"].append(_num(value))
    return {"sweep_id": sweep_id, "cursor": cursor, "configs": sweep_configs(engine, sweep_id),
            "runs": list(out.values())}


def epochs_since(engine: Engine, sweep_id: int, cursor: int, keys: list[str] | None = None,
                 limit: int = 5000) -> dict[str, Any]:
    """Metric rows of the sweep committed after CURSOR (a metric id), and the run statuses."""
    with read_session(engine) as s:
        q = (select(Metric.id, Metric.run_id, Metric.key, Metric.epoch, Metric.value)
             .join(Run, Run.id == Metric.run_id)
             .where(Run.sweep_id == sweep_id, Metric.id > cursor))
        if keys:
            q = q.where(Metric.key.in_(keys))
        rows = s.execute(q.order_by(Metric.id).limit(limit)).all()
        statuses = s.execute(select(Run.id, Run.status).where(Run.sweep_id == sweep_id)).all()
    new_cursor = rows[-1].id if rows else cursor
    return {
        "cursor": new_cursor,
        "points": [{"run_id": r.run_id, "key": r.key, "epoch": r.epoch, "value": _num(r.value)} for r in rows],
        "statuses": {str(r.id): r.status for r in statuses},
    }
