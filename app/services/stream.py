"""What the event stream of a sweep sends: the changes committed after a cursor.

The cursor is a value of the sweep's commit sequence (`SweepSeq`): metric rows and run changes
carry the seq their commit got, and commit order is seq order within a sweep. A poll reads one
snapshot (one read transaction; REPEATABLE READ on PostgreSQL, a WAL snapshot on SQLite): the
counter N, then what was stamped after the cursor up to N. Nothing at or below N can commit later,
so the next poll starts at N and never skips a row, nor reads again what it sent. An idle poll reads
the counter row only; a busy one reads what changed, through the (sweep_id, seq) indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import Metric, Run, SweepSeq
from app.numbers import finite_or_none
from app.services.curve_cells import touched_cells
from app.services.sweeps import get_sweep_row

POINTS_PER_POLL = 1000  # a stream catching up polls again at once (app.api.stream)


@contextmanager
def snapshot_session(engine: Engine) -> Iterator[Session]:
    """A read-only transaction whose statements all see one snapshot of the database."""
    options: dict[str, Any] = {"sweeplab_readonly": True}
    if engine.dialect.name == "postgresql":  # READ COMMITTED would take a snapshot per statement
        options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as conn, Session(bind=conn) as session:
        yield session


def sweep_seqs(session: Session, sweep_ids: Iterable[int]) -> dict[int, int]:
    """Each sweep's counter: the seq of its last commit (0 before any)."""
    ids = sorted(set(sweep_ids))
    found = dict(session.execute(select(SweepSeq.sweep_id, SweepSeq.seq).where(SweepSeq.sweep_id.in_(ids))).all())
    return {i: int(found.get(i, 0)) for i in ids}


def stream_cursor(engine: Engine, sweep_id: int) -> int:
    """Where a stream of SWEEP_ID that has seen everything committed so far starts."""
    with snapshot_session(engine) as s:
        return sweep_seqs(s, [sweep_id])[sweep_id]


def open_stream(engine: Engine, sweep_id: int, run_id: int | None) -> int:
    """The cursor of everything committed so far; NotFound unless the sweep exists (and RUN_ID, when
    given, is one of its runs)."""
    get_sweep_row(engine, sweep_id)
    with snapshot_session(engine) as s:
        if run_id is not None and s.scalar(select(Run.id).where(Run.id == run_id, Run.sweep_id == sweep_id)) is None:
            raise NotFound(f"run {run_id} is not a run of sweep {sweep_id}")
        return sweep_seqs(s, [sweep_id])[sweep_id]


@dataclass
class Changes:
    """What committed in (previous cursor, cursor]: metric points and the runs' statuses."""

    cursor: int
    points: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    # The aggregated cells the points touched, as of the same snapshot (per config id and key,
    # columnar; app.services.curve_cells): a page updates its curves with them, no request.
    cells: dict[str, dict[str, Any]] | None = None


def changes_since(engine: Engine, sweep_id: int, cursor: int, keys: Sequence[str] | None = None,
                  run_id: int | None = None, limit: int = POINTS_PER_POLL) -> Changes:
    """Metric points (of KEYS, of RUN_ID when given) and the status of every run whose seq moved,
    committed after CURSOR: whole commits, about LIMIT points (more when one commit has more)."""
    with snapshot_session(engine) as s:
        top = sweep_seqs(s, [sweep_id])[sweep_id]
        if top <= cursor:
            return Changes(cursor)
        q = (select(Metric.seq, Metric.run_id, Run.config_id, Metric.key, Metric.epoch, Metric.value)
             .join(Run, Run.id == Metric.run_id).where(Metric.seq > cursor, Metric.seq <= top))
        # One run's rows through its own index (few); a sweep's through (sweep_id, seq).
        q = q.where(Metric.run_id == run_id, Run.sweep_id == sweep_id) if run_id is not None \
            else q.where(Metric.sweep_id == sweep_id)
        if keys:
            q = q.where(Metric.key.in_(list(keys)))
        rows = s.execute(q.order_by(Metric.seq).limit(limit + 1)).all()
        upto = top
        if len(rows) > limit:  # stop after the last commit this batch holds whole
            upto = rows[limit - 1].seq if rows[limit].seq > rows[limit - 1].seq else rows[limit].seq - 1
            rows = [r for r in rows if r.seq <= upto] or s.execute(q.where(Metric.seq == rows[0].seq)).all()
            upto = rows[-1].seq
        runs_q = select(Run.id, Run.status).where(Run.sweep_id == sweep_id, Run.seq > cursor, Run.seq <= upto)
        runs = s.execute(runs_q.where(Run.id == run_id) if run_id is not None else runs_q).all()
        cells = touched_cells(s, ((r.config_id, r.key, r.epoch) for r in rows)) \
            if run_id is None and rows else None
    points = [{"seq": seq, "run_id": run, "config_id": config, "key": key, "epoch": epoch,
               "value": finite_or_none(value)}
              for seq, run, config, key, epoch, value in rows]  # unpacked: a catching-up stream reads many
    return Changes(upto, points, {str(i): status for i, status in runs}, cells)
