"""The curves behind the charts, aggregated in the database: per config and epoch the mean / std /
min / max / n over replicates, every replicate's own series on demand, and the configs they belong
to. Answers are columnar ({"epochs": [...], "mean": [...]}) and cached per process
(app.services.memo): a config's curves are recomputed when its runs change. Tables and comparisons
are app.services.results; the event stream is app.services.stream."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from app.db import read_session
from app.errors import NotFound, SweeplabError
from app.models import Config, CurveStat, Metric, Run, Sweep
from app.numbers import finite_or_none
from app.services.curve_cells import Columns, add_cell, empty
from app.services.incremental import parts_of_one
from app.services.memo import dumps, memo
from app.services.snapshots import Scope, Snapshot, cursor_of, snapshot
from app.services.stream import snapshot_session, sweep_seqs
from app.services.sweeps import get_sweep_row

MAX_COMPARED = 20


def parse_ids(text: str, most: int = MAX_COMPARED) -> list[int]:
    """'3,7,12' -> [3, 7, 12] (order kept, repeats dropped): config ids as pages and queries give them."""
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SweeplabError(f"configs: expected comma-separated config ids, got {text[:100]!r}") from None
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise SweeplabError("configs: give at least one config id")
    if len(ids) > most:
        raise SweeplabError(f"configs: at most {most} configs at once")
    return ids


# ---- configs ---------------------------------------------------------------------------------

def _configs_version(engine: Engine, scope: Scope) -> tuple[int, int] | None:
    """For a sweep's configs, their count and largest id: configs are only ever added (a search adds
    them as work frees up) or, for external runs that moved to the config of their params, deleted,
    so either changes this. Named configs never change: None."""
    if scope.config_ids is not None:
        return None
    with read_session(engine) as s:
        count, largest = s.execute(select(func.count(), func.coalesce(func.max(Config.id), 0))
                                   .where(Config.sweep_id == scope.sweep_id)).one()
    return int(count), int(largest)


def config_rows(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """What never changes about the configs: ids, sweep, position, label, swept values, epochs."""
    def read() -> list[dict[str, Any]]:
        with read_session(engine) as s:
            q = (select(Config.id, Config.sweep_id, Config.position, Config.label, Config.params, Config.train,
                        Sweep.name, Sweep.study).join(Sweep, Sweep.id == Config.sweep_id))
            if scope.config_ids is None:
                q = q.where(Config.sweep_id == scope.sweep_id)
            else:
                q = q.where(Config.id.in_(list(scope.config_ids)))
            rows = s.execute(q.order_by(Config.sweep_id, Config.position)).all()
        return [{"id": r.id, "sweep_id": r.sweep_id, "sweep_name": r.name, "study": r.study, "position": r.position,
                 "label": r.label, "params": r.params, "epochs": r.train.get("epochs")} for r in rows]

    rows = memo.get((engine.url, "configs", scope), _configs_version(engine, scope), read)
    if scope.config_ids is not None and scope.sweep_id is None:
        found = {c["id"]: c for c in rows}
        missing = [i for i in scope.config_ids if i not in found]
        if missing:
            memo.put((engine.url, "configs", scope), "stale", rows)
            raise NotFound(f"config {missing[0]} not found")
        rows = [found[i] for i in scope.config_ids]
    return rows


def with_counts(rows: list[dict[str, Any]], snap: Snapshot) -> list[dict[str, Any]]:
    """ROWS with each config's number of runs."""
    counts = snap.runs_per_config()
    return [{**c, "runs": counts.get(c["id"], 0)} for c in rows]


def config_infos(engine: Engine, sweep_id: int | None = None,
                 config_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Configs of a sweep (by position) or the given configs (in the given order), with sweep names
    and replicate counts."""
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    return with_counts(config_rows(engine, scope), snapshot(engine, scope))


def recent_configs(engine: Engine, sweeps: int = 100) -> list[dict[str, Any]]:
    """Configs of the newest SWEEPS sweeps, newest sweep first (the compare page's picker)."""
    with read_session(engine) as s:
        newest = select(Sweep.id).order_by(Sweep.id.desc()).limit(sweeps).scalar_subquery()
        ids = list(s.scalars(select(Config.id).where(Config.sweep_id.in_(newest))
                             .order_by(Config.sweep_id.desc(), Config.position)))
    return config_infos(engine, config_ids=ids) if ids else []


def sweep_configs(engine: Engine, sweep_id: int) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("id", "position", "label", "params")} for c in config_infos(engine, sweep_id)]


# ---- aggregated curves -----------------------------------------------------------------------

def _aggregate_key(engine: Engine, key: str, scope: Scope) -> dict[int, Columns]:
    """Per config, the epoch-by-epoch mean/std/min/max/n of KEY over its replicates, read from the
    cells the database keeps as epochs commit (CurveStat): one row per config and epoch, however
    many runs. A cell holding an inf answers null where the raw aggregate would be inf or NaN."""
    q = select(CurveStat).where(CurveStat.key == key)
    if scope.config_ids is not None:
        q = q.where(CurveStat.config_id.in_(list(scope.config_ids)))
    if scope.sweep_id is not None:
        q = q.where(CurveStat.config_id.in_(select(Config.id).where(Config.sweep_id == scope.sweep_id)))
    with read_session(engine) as s:
        cells = s.scalars(q.order_by(CurveStat.config_id, CurveStat.epoch)).all()
    out: dict[int, Columns] = {}
    for c in cells:
        add_cell(out.setdefault(c.config_id, empty()), c)
    return out


def _aggregates_of(engine: Engine, key: str, scope: Scope, snap: Snapshot) -> tuple[int, dict[int, Columns]]:
    """KEY's curves of every config in SCOPE, recomputing only the configs whose runs changed
    (app.services.incremental); with a generation number that changes whenever the curves do."""
    def curves(only: list[int] | None) -> dict[int, Columns]:
        return _aggregate_key(engine, key, scope if only is None else Scope(scope.sweep_id, tuple(only)))

    parts = parts_of_one(engine, (engine.url, "agg", scope, key), snap, curves)
    return parts.generation, parts.by_config


@dataclass(frozen=True)
class _Curves:
    """Everything an aggregates answer is made of, read for one request."""

    keys: tuple[str, ...]
    scope: Scope  # the sweep, or the configs of any sweeps, asked about
    subset: tuple[int, ...] | None  # the configs asked for within the sweep, if some only
    configs: list[dict[str, Any]]
    snap: Snapshot
    curves: dict[str, tuple[int, dict[int, Columns]]]  # key -> (generation, curves per config)

    def answer(self) -> dict[str, Any]:
        """The answer without its cursor."""
        series: dict[str, dict[str, Any]] = {str(c["id"]): {} for c in self.configs}
        for key, (_, by_config) in self.curves.items():
            for config_id, col in by_config.items():
                if str(config_id) in series:
                    series[str(config_id)][key] = col
        return {"keys": list(self.keys), "configs": with_counts(self.configs, self.snap), "series": series}


def _curves(engine: Engine, keys: Sequence[str], sweep_id: int | None,
            config_ids: Sequence[int] | None) -> _Curves:
    if sweep_id is not None:
        get_sweep_row(engine, sweep_id)
    scope = Scope(sweep_id, None) if sweep_id is not None else Scope(None, tuple(config_ids or ()))
    rows = config_rows(engine, scope)
    snap = snapshot(engine, scope)
    agg_scope, agg_snap, subset = scope, snap, None
    if sweep_id is not None and config_ids is not None:
        wanted = set(config_ids)
        rows = [c for c in rows if c["id"] in wanted]
        subset = tuple(c["id"] for c in rows)
        if any(memo.peek((engine.url, "agg", scope, key)) is None for key in keys):
            # No curves of the whole sweep to cut from: compute only these configs' (a page shows a few).
            agg_scope, agg_snap = Scope(sweep_id, tuple(sorted(wanted))), snap.only(wanted)
    curves = {key: _aggregates_of(engine, key, agg_scope, agg_snap) for key in keys}
    return _Curves(tuple(keys), scope, subset, rows, snap, curves)


# The curves hold at least what committed up to the snapshot's cursor (they were read after it,
# or have not changed since), so a stream from it misses nothing.

def aggregate_series(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
                     config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Columnar curves per config and key, aggregated over replicates, with the cursor to stream from.
    CONFIG_IDS alone: those configs from any sweeps; with SWEEP_ID: only those of the sweep."""
    c = _curves(engine, keys, sweep_id, config_ids)
    return {"cursor": c.snap.cursor, **c.answer()}


def aggregate_json(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
                   config_ids: Sequence[int] | None = None) -> bytes:
    """`aggregate_series` serialised: the body is cached while its curves and run statuses hold, so
    many open pages share one computation; the cursor is always fresh."""
    c = _curves(engine, keys, sweep_id, config_ids)
    version = (c.snap.status_digest, tuple(generation for generation, _ in c.curves.values()))
    body = memo.get((engine.url, "agg-json", c.scope, c.subset, c.keys), version, lambda: dumps(c.answer()))
    return b'{"cursor":' + dumps(c.snap.cursor) + b"," + body[1:]


# ---- single replicates -----------------------------------------------------------------------

RUNS_SHOWN = 200  # single replicates drawn at once unless a client asks for more
MOST_RUNS_SHOWN = 2_000


def _points(session: Any, run_ids: list[int], keys: Sequence[str]) -> dict[int, dict[str, dict[str, list[Any]]]]:
    """Per run of RUN_IDS, per key of KEYS: its points, columnar, epochs in order."""
    out: dict[int, dict[str, dict[str, list[Any]]]] = {r: {k: {"epochs": [], "values": []} for k in keys}
                                                       for r in run_ids}
    if not run_ids:
        return out
    # Core rows, not the ORM's: 40,000 points of 200 runs come back in a third of the time.
    rows = session.connection().execute(
        select(Metric.run_id, Metric.key, Metric.epoch, Metric.value)
        .where(Metric.run_id.in_(run_ids), Metric.key.in_(list(keys)))
        .order_by(Metric.run_id, Metric.key, Metric.epoch)).all()
    for (run_id, key), points in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        sr = out[run_id][key]
        for _, _, epoch, value in points:
            sr["epochs"].append(epoch)
            sr["values"].append(finite_or_none(value))
    return out


def _replicates(session: Any, runs: Sequence[Any], keys: Sequence[str]) -> list[dict[str, Any]]:
    """RUNS (id, config_id, seed, status rows) with their series of KEYS, in the order given."""
    points = _points(session, [r.id for r in runs], keys)
    return [{"run_id": r.id, "config_id": r.config_id, "seed": r.seed, "status": r.status, "series": points[r.id]}
            for r in runs]


_REPLICATE_COLUMNS = (Run.id, Run.config_id, Run.seed, Run.status)


def run_series(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
               config_ids: Sequence[int] | None = None, max_runs: int = RUNS_SHOWN) -> dict[str, Any]:
    """The first MAX_RUNS replicates' (by id) own series for KEYS (columnar), how many runs there
    are (`runs_total`, `truncated`), and the cursor to stream from (read in the same snapshot;
    None for configs of several sweeps). A whole sweep's answer is cached (`_sweep_series`)."""
    if sweep_id is not None and config_ids is None:
        return _sweep_series(engine, sweep_id, keys, max_runs)
    where = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None).where()
    with snapshot_session(engine) as s:
        total = s.scalar(select(func.count()).select_from(Run).where(where)) or 0
        runs = s.execute(select(Run.id, Run.sweep_id, Run.config_id, Run.seed, Run.status)
                         .where(where).order_by(Run.id).limit(max_runs)).all()
        seqs = sweep_seqs(s, [sweep_id] if sweep_id is not None else [r.sweep_id for r in runs])
        replicates = _replicates(s, runs, keys)
    return {"cursor": cursor_of(seqs), "runs": replicates, "runs_total": total, "truncated": total > len(runs)}


def _sweep_series(engine: Engine, sweep_id: int, keys: Sequence[str], max_runs: int) -> dict[str, Any]:
    """`run_series` of a whole sweep, cached with the sweep's commit sequence it was read at: a
    later call reads, in one snapshot, the sequence, the first runs' ids and the runs stamped or
    given metrics since (migrations 0002, 0007), and reads again only those of the first runs;
    an unchanged sweep costs a few small queries, however many points it holds."""
    key = (engine.url, "series", sweep_id, tuple(keys), max_runs)
    hit = memo.peek(key)
    with snapshot_session(engine) as s:
        seq = sweep_seqs(s, [sweep_id])[sweep_id]
        if hit is not None and hit[0][0] == seq:
            return hit[1]  # type: ignore[no-any-return]
        total = s.scalar(select(func.count()).select_from(Run).where(Run.sweep_id == sweep_id)) or 0
        ids = list(s.scalars(select(Run.id).where(Run.sweep_id == sweep_id).order_by(Run.id).limit(max_runs)))
        if hit is None or hit[0][0] > seq or hit[0][1] != ids:  # first look, a new database, runs gone
            runs = s.execute(select(*_REPLICATE_COLUMNS).where(Run.id.in_(ids)).order_by(Run.id)).all()
            replicates = _replicates(s, runs, keys)
        else:
            (since, _), before = hit
            stamped = set(s.scalars(select(Run.id).where(Run.sweep_id == sweep_id, Run.seq > since)))
            written = set(s.scalars(select(Metric.run_id).distinct()
                                    .where(Metric.sweep_id == sweep_id, Metric.seq > since, Metric.seq <= seq)))
            changed = sorted((stamped | written) & set(ids))
            runs = s.execute(select(*_REPLICATE_COLUMNS).where(Run.id.in_(changed)).order_by(Run.id)).all()
            fresh = {r["run_id"]: r for r in _replicates(s, runs, keys)}
            replicates = [fresh.get(r["run_id"], r) for r in before["runs"]]
    answer = {"cursor": seq, "runs": replicates, "runs_total": total, "truncated": total > len(ids)}
    memo.put(key, (seq, ids), answer)
    return answer


def sweep_run_series(engine: Engine, sweep_id: int, keys: Sequence[str], max_runs: int = RUNS_SHOWN) -> dict[str, Any]:
    """The first MAX_RUNS runs' series of a sweep for KEYS, columnar, with the cursor to stream from."""
    get_sweep_row(engine, sweep_id)
    return {"sweep_id": sweep_id, "configs": sweep_configs(engine, sweep_id),
            **run_series(engine, keys, sweep_id=sweep_id, max_runs=max_runs)}
