"""The metric points an MLflow run logs, stored as its epochs (the rest of a run's logging:
app/services/mlflow_run_logging.py).

**A metric's step is its epoch** (a retried step > 0 stores nothing: ON CONFLICT DO NOTHING).
MLflow's Python client sends step 0 when none is given, so a step of 0 (or none) goes to epoch 0
while that epoch of the key is free, and otherwise to the next epoch of that key, unless it is a
retried request (the client retries on 5xx and lost connections, sending the same points): a
point the key stored before, its client timestamp and value both, stores nothing, and so does
one older than every point the key remembers once it remembers REMEMBERED (a retried batch
longer than the memory). The key's last REMEMBERED such points are kept in the run's tags under
`sweeplab.stepless`, so a point of a client whose clock is behind another's, two points in one
millisecond, or points after a bogus timestamp are all new. (Runs logged before kept only the
key's latest timestamp there: a point no later than it is a retry. A point without a timestamp
is always new, except an explicit step 0, which is epoch 0.) Keras' autolog logs its 0-based
epoch index as the step, so a fit of N epochs reads as epochs 0..N-1, as MLflow shows it. A key
is stored by sweeplab's name for it (app.metrics.keras_key: `epoch_loss` is `loss`). NaN is
stored as null, infinities as such; answers give "NaN" and "Infinity" back.

Metric rows belong to the run, not to the config, so a run moving to the config of its params
touches none: each epoch is stored once, and no run is ever made twice by a move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import db_now, dialect_insert
from app.errors import InvalidSpec
from app.metrics import keras_key
from app.models import Metric, Run, metric_value

STEPLESS_TAG = "sweeplab.stepless"  # per key, its latest points logged without a step: [[timestamp, value], ...]
REMEMBERED = 50  # such points a key remembers
MAX_EPOCH = 100_000  # as an external run's epochs


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float  # NaN and infinities included
    step: int | None  # None: not given
    timestamp: int | None = None  # the client's, in ms


def metric_json(value: float | None) -> float | str:
    """A stored value as MLflow's JSON carries it: NaN (stored null) and infinities as text."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _remembered(memory: Any) -> tuple[set[tuple[int, str]], int | None]:
    """A key's memory of stepless points: the (timestamp, value) pairs, and the timestamp below
    which a point counts as a retry: older than all remembered once REMEMBERED are (a retried
    batch longer than the memory); in the former shape, the key's latest timestamp alone, no later
    than it."""
    if isinstance(memory, int):
        return set(), memory + 1
    remembered = [(int(ts), str(v)) for ts, v in memory or []]
    floor = min(ts for ts, _ in remembered) if len(remembered) >= REMEMBERED else None
    return set(remembered), floor


def store_metrics(s: Session, run: Run, points: Sequence[MetricPoint]) -> int:
    """Store POINTS (see the module's "A metric's step is its epoch"); the rows newly stored."""
    if not points:
        return 0
    points = [MetricPoint(keras_key(p.key), p.value, p.step, p.timestamp) for p in points]
    stepless = {p.key for p in points if not p.step}
    span: dict[str, tuple[int, int]] = {}
    if stepless:
        span = {k: (lo, hi) for k, lo, hi in s.execute(
            select(Metric.key, func.min(Metric.epoch), func.max(Metric.epoch))
            .where(Metric.run_id == run.id, Metric.key.in_(stepless)).group_by(Metric.key)).all()}
    tags = dict(run.tags or {})
    before: dict[str, Any] = dict(tags.get(STEPLESS_TAG) or {})  # each key's memory before this request
    known = {k: _remembered(before[k]) for k in stepless if k in before}
    added: dict[str, list[list[Any]]] = {}
    rows: dict[tuple[str, int], float | None] = {}
    for p in points:
        if p.step:
            epoch = p.step
        else:
            lo, hi = span.get(p.key, (None, None))
            pairs, floor = known.get(p.key, (set(), None))
            if lo != 0:  # epoch 0 of the key is free
                epoch = 0
            elif p.timestamp is None:
                epoch = 0 if p.step == 0 else (hi or 0) + 1  # no timestamp: an explicit 0 is epoch 0
            elif (p.timestamp, repr(p.value)) in pairs or (floor is not None and p.timestamp < floor):
                continue  # logged before (a retried request)
            else:
                epoch = (hi or 0) + 1
            span[p.key] = (0, max(epoch, hi or 0))
            if p.timestamp is not None:
                added.setdefault(p.key, []).append([p.timestamp, repr(p.value)])
        if epoch > MAX_EPOCH:
            raise InvalidSpec(f"metrics.{p.key}: epoch {epoch} is past the last one stored ({MAX_EPOCH})")
        rows.setdefault((p.key, epoch), metric_value(p.value))
    if added:
        kept = dict(before)  # a key not logged now keeps its memory as it is, of either shape
        for key, new in added.items():
            old = before.get(key)
            kept[key] = ((old if isinstance(old, list) else []) + new)[-REMEMBERED:]
        tags[STEPLESS_TAG] = kept
        run.tags = tags
    if not rows:
        return 0
    values = [{"run_id": run.id, "key": k, "epoch": e, "value": v, "created_at": db_now()}
              for (k, e), v in rows.items()]
    stored = len(s.execute(dialect_insert(s)(Metric).values(values)
                           .on_conflict_do_nothing(index_elements=["run_id", "key", "epoch"])
                           .returning(Metric.id)).all())
    top = max(e for _, e in rows)
    if top > run.last_epoch:
        s.execute(update(Run).where(Run.id == run.id, Run.last_epoch < top).values(last_epoch=top))
    return stored
