"""A sweep's metrics in long form (one row per run, key and epoch), streamed as CSV or JSON Lines.

Columns: sweep, config, config_label, seed, run, key, epoch, value. Values that are NaN or
infinite are written empty (CSV) or null (JSON), as /api/runs/{id}/metrics answers them; finite
values are written with repr(), which reads back to the same float.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select

from app.db import read_session
from app.models import Config, Metric, Run
from app.services.sweeps import get_sweep_row

COLUMNS = ("sweep", "config", "config_label", "seed", "run", "key", "epoch", "value")
ROWS_PER_CHUNK = 2000


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def metric_rows(engine: Engine, sweep_id: int, keys: list[str] | None = None) -> Iterator[tuple[Any, ...]]:
    """Every metric of the sweep as a COLUMNS tuple, ordered by run, key and epoch."""
    with read_session(engine) as s:
        q = (select(Run.sweep_id, Run.config_id, Config.label, Run.seed, Run.id, Metric.key, Metric.epoch,
                    Metric.value)
             .join(Run, Run.id == Metric.run_id).join(Config, Config.id == Run.config_id)
             .where(Run.sweep_id == sweep_id))
        if keys:
            q = q.where(Metric.key.in_(keys))
        q = q.order_by(Run.id, Metric.key, Metric.epoch).execution_options(yield_per=ROWS_PER_CHUNK)
        for row in s.execute(q):
            yield (*row[:7], _finite(row[7]))


def _chunks(rows: Iterator[tuple[Any, ...]], write: Any, buffer: io.StringIO) -> Iterator[str]:
    n = 0
    for row in rows:
        write(row)
        n += 1
        if n % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def metrics_csv(engine: Engine, sweep_id: int, keys: list[str] | None = None) -> Iterator[str]:
    """The sweep's metrics as CSV text, a header line then one line per value, in chunks."""
    get_sweep_row(engine, sweep_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)

    def write(row: tuple[Any, ...]) -> None:
        writer.writerow((*row[:7], "" if row[7] is None else repr(row[7])))

    return _chunks(metric_rows(engine, sweep_id, keys), write, buffer)


def metrics_jsonl(engine: Engine, sweep_id: int, keys: list[str] | None = None) -> Iterator[str]:
    """The sweep's metrics as JSON Lines, one object per value, in chunks."""
    get_sweep_row(engine, sweep_id)
    buffer = io.StringIO()

    def write(row: tuple[Any, ...]) -> None:
        buffer.write(json.dumps(dict(zip(COLUMNS, row, strict=True)), allow_nan=False))
        buffer.write("\n")

    return _chunks(metric_rows(engine, sweep_id, keys), write, buffer)
