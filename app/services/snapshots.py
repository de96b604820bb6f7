"""What a chart is about (a `Scope` of runs) and a `Snapshot` of those runs, from which the cached
chart answers (app.services.memo) learn what changed since they were computed."""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from app.db import read_session
from app.models import Metric, Run
from app.services.stream import snapshot_session, sweep_seqs


def cursor_of(seqs: dict[int, int]) -> int | None:
    """The stream cursor of what was read with these sweeps' sequences: only one sweep has one."""
    return next(iter(seqs.values())) if len(seqs) == 1 else None


@dataclass(frozen=True)
class Scope:
    """The runs a chart is about: a sweep's, some configs' (from any sweeps), or some of a sweep's."""

    sweep_id: int | None = None
    config_ids: tuple[int, ...] | None = None

    def where(self) -> Any:
        if self.config_ids is None:
            return Run.sweep_id == self.sweep_id
        only = Run.config_id.in_(list(self.config_ids))
        return and_(Run.sweep_id == self.sweep_id, only) if self.sweep_id is not None else only


class Snapshot:
    """Every run of a scope as (config, last epoch, status) and its sweeps' commit sequences
    (app.services.stream), read in one snapshot. A worker records an epoch's metrics with the run's
    last epoch and a retry deletes them with a status change, so two snapshots, plus the runs of the
    metrics committed between their sequences, tell which configs' curves changed."""

    def __init__(self, seqs: dict[int, int], runs: dict[int, tuple[int, int, str]], digest: int | None = None) -> None:
        self.seqs, self.runs = seqs, runs
        # A run's config is part of it: an external (MLflow) run moves to the config of its params.
        # A sum of the runs' hashes, so that a snapshot grown from an older one updates it in O(changes).
        self.status_digest = digest if digest is not None else sum(map(_entry_hash, runs.items())) & _MASK

    @property
    def cursor(self) -> int | None:
        """Where the stream of the scope's sweep goes on from; None for configs of several sweeps."""
        return cursor_of(self.seqs)

    def only(self, config_ids: set[int]) -> Snapshot:
        """The part of this snapshot about CONFIG_IDS."""
        return Snapshot(self.seqs, {r: v for r, v in self.runs.items() if v[0] in config_ids})

    def changed_configs(self, engine: Engine, older: Snapshot) -> set[int]:
        changed: set[int] = set()
        for r in self.runs.keys() | older.runs.keys():
            now, before = self.runs.get(r), older.runs.get(r)
            if now != before:  # the config it is in now and the one it left (a run that moved) both change
                changed |= {v[0] for v in (now, before) if v is not None}
        moved = [and_(Metric.sweep_id == sweep, Metric.seq > older.seqs.get(sweep, 0), Metric.seq <= seq)
                 for sweep, seq in self.seqs.items() if seq > older.seqs.get(sweep, 0)]
        if moved:
            with read_session(engine) as s:
                written = s.scalars(select(Metric.run_id).distinct().where(or_(*moved))).all()
            changed |= {self.runs[r][0] for r in written if r in self.runs}
        return changed

    def runs_per_config(self) -> Counter[int]:
        return Counter(config_id for config_id, _, _ in self.runs.values())


def _entry_hash(entry: tuple[int, tuple[int, int, str]]) -> int:
    run_id, (config_id, _, status) = entry
    return hash((run_id, config_id, status))


_MASK = (1 << 64) - 1
_RUN_COLUMNS = (Run.id, Run.sweep_id, Run.config_id, Run.last_epoch, Run.status)
# Per engine (a test's fresh database gets a new one), per sweep: the last snapshot read.
_latest: weakref.WeakKeyDictionary[Engine, OrderedDict[int, Snapshot]] = weakref.WeakKeyDictionary()
_latest_lock = threading.Lock()
LATEST_KEPT = 64


def _sweep_snapshot(engine: Engine, sweep_id: int) -> Snapshot:
    """The sweep's snapshot, grown from the last one read in this process: only the runs stamped
    after its sequence (run inserts and changes of status, last epoch, cancel or config all stamp
    one, migrations 0002 and 0007) are read, so an unchanged sweep costs one row and a changed one
    what changed, not its size. Every run read in the one snapshot of its sequence."""
    with _latest_lock:
        known = _latest.setdefault(engine, OrderedDict()).get(sweep_id)
    with snapshot_session(engine) as s:
        seqs = sweep_seqs(s, [sweep_id])
        if known is not None and known.seqs == seqs:
            return known
        if known is None or seqs[sweep_id] < known.seqs[sweep_id]:  # first look, or a new database
            rows = s.execute(select(*_RUN_COLUMNS).where(Run.sweep_id == sweep_id)).all()
            snap = Snapshot(seqs, {r.id: (r.config_id, r.last_epoch, r.status) for r in rows})
        else:
            rows = s.execute(select(*_RUN_COLUMNS).where(Run.sweep_id == sweep_id,
                                                        Run.seq > known.seqs[sweep_id])).all()
            runs, digest = dict(known.runs), known.status_digest
            for r in rows:
                before = runs.get(r.id)
                if before is not None:
                    digest -= _entry_hash((r.id, before))
                runs[r.id] = (r.config_id, r.last_epoch, r.status)
                digest += _entry_hash((r.id, runs[r.id]))
            snap = Snapshot(seqs, runs, digest & _MASK)
    with _latest_lock:
        kept = _latest.setdefault(engine, OrderedDict())
        kept[sweep_id] = snap
        kept.move_to_end(sweep_id)
        while len(kept) > LATEST_KEPT:
            kept.popitem(last=False)
    return snap


def snapshot(engine: Engine, scope: Scope) -> Snapshot:
    if scope.sweep_id is not None:
        whole = _sweep_snapshot(engine, scope.sweep_id)
        return whole if scope.config_ids is None else whole.only(set(scope.config_ids))
    with snapshot_session(engine) as s:
        rows = s.execute(select(*_RUN_COLUMNS).where(scope.where())).all()
        seqs = sweep_seqs(s, [r.sweep_id for r in rows])
    return Snapshot(seqs, {r.id: (r.config_id, r.last_epoch, r.status) for r in rows})
