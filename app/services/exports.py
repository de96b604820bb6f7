"""A sweep's metrics in long form (one row per run, key and epoch), streamed as CSV or JSON Lines.

Columns: sweep, config, config_label, seed, run, key, epoch, value. Values that are NaN or
infinite are written empty (CSV) or null (JSON), as /api/runs/{id}/metrics answers them; finite
values are written with repr(), which reads back to the same float. Text cells of the CSV that a
spreadsheet would run as a formula get OWASP's single-quote prefix (at their start, and after a
semicolon, where a spreadsheet splits cells at semicolons).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select, tuple_

from app.db import read_session
from app.models import Config, Metric, Run
from app.numbers import finite_or_none
from app.services.sweeps import get_sweep_row

COLUMNS = ("sweep", "config", "config_label", "seed", "run", "key", "epoch", "value")
ROWS_PER_CHUNK = 2000
ROWS_PER_PAGE = 5000
# A spreadsheet takes a cell starting with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# A semicolon before one of them (past any quotes and spaces): Excel in a locale whose list
# separator is `;` (German, French, ...) splits a comma CSV there, and that part starts a cell.
SEMICOLON_FORMULA = re.compile(r';(?=[ "]*[=+\-@\t\r])')


def csv_text(cell: str) -> str:
    """A text cell as a spreadsheet shows it, never as a formula: OWASP's single-quote prefix on a
    cell starting with = + - @, tab or CR, and after a semicolon followed by one of them (where `;`
    separates cells). Numbers are written as numbers and never pass here."""
    cell = SEMICOLON_FORMULA.sub(";'", cell)
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


RunInfo = tuple[int, int, str, int]  # sweep, config, config label, seed


def _runs(engine: Engine, sweep_id: int) -> dict[int, RunInfo]:
    """Each run of the sweep (those there when the download starts) and what its rows repeat."""
    with read_session(engine) as s:
        q = (select(Run.id, Run.sweep_id, Run.config_id, Config.label, Run.seed)
             .join(Config, Config.id == Run.config_id).where(Run.sweep_id == sweep_id))
        return {run_id: (sweep, config, label, seed) for run_id, sweep, config, label, seed in s.execute(q)}


def _page(engine: Engine, first_run: int, last_run: int, keys: list[str] | None,
          after: tuple[int, str, int] | None) -> list[tuple[int, str, int, float | None]]:
    """Up to ROWS_PER_PAGE metric rows of runs FIRST_RUN..LAST_RUN after the cursor AFTER, in a
    short read of its own. Only the metrics table, so both databases walk its (run_id, key, epoch)
    index from the cursor: a separate lower bound on run_id would make SQLite rescan the cursor's
    run from its start, and a join would let it sort the whole rest of the sweep for each page."""
    with read_session(engine) as s:
        q = select(Metric.run_id, Metric.key, Metric.epoch, Metric.value).where(Metric.run_id <= last_run)
        if after is None:
            q = q.where(Metric.run_id >= first_run)
        else:
            q = q.where(tuple_(Metric.run_id, Metric.key, Metric.epoch) > tuple_(*after))
        if keys:
            q = q.where(Metric.key.in_(keys))
        q = q.order_by(Metric.run_id, Metric.key, Metric.epoch).limit(ROWS_PER_PAGE)
        return [(run_id, key, epoch, value) for run_id, key, epoch, value in s.execute(q)]


def metric_rows(engine: Engine, sweep_id: int, keys: list[str] | None = None) -> Iterator[tuple[Any, ...]]:
    """Every metric of the sweep as a COLUMNS tuple, ordered by run, key and epoch.

    Read in keyset pages, each its own short transaction: no connection is checked out and no
    transaction is open while the client takes its time over what was read (a slow download
    must not hold the pool, nor keep PostgreSQL's vacuum or SQLite's checkpoint waiting)."""
    runs = _runs(engine, sweep_id)
    if not runs:
        return
    first_run, last_run = min(runs), max(runs)
    after: tuple[int, str, int] | None = None
    while True:
        page = _page(engine, first_run, last_run, keys, after)
        for run_id, key, epoch, value in page:
            info = runs.get(run_id)  # None: a run of another sweep with an id in this range
            if info is not None:
                yield (*info, run_id, key, epoch, finite_or_none(value))
        if len(page) < ROWS_PER_PAGE:
            return
        after = page[-1][:3]


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
    """The sweep's metrics as CSV text, a header line then one line per value, in chunks; text
    cells (config label, key) escaped against formula injection."""
    get_sweep_row(engine, sweep_id)
    buffer = io.StringIO()
    # RFC 4180's CRLF: then a cell holding a CR or LF is quoted (with "\n" alone, a bare CR
    # went out unquoted and split the row in spreadsheets).
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)

    def write(row: tuple[Any, ...]) -> None:
        sweep, config, label, seed, run, key, epoch, value = row
        writer.writerow((sweep, config, csv_text(label), seed, run, csv_text(key), epoch,
                         "" if value is None else repr(value)))

    return _chunks(metric_rows(engine, sweep_id, keys), write, buffer)


def metrics_jsonl(engine: Engine, sweep_id: int, keys: list[str] | None = None) -> Iterator[str]:
    """The sweep's metrics as JSON Lines, one object per value, in chunks."""
    get_sweep_row(engine, sweep_id)
    buffer = io.StringIO()

    def write(row: tuple[Any, ...]) -> None:
        buffer.write(json.dumps(dict(zip(COLUMNS, row, strict=True)), allow_nan=False))
        buffer.write("\n")

    return _chunks(metric_rows(engine, sweep_id, keys), write, buffer)
