"""Data behind the charts, aggregated in the database: per config and epoch the mean / std / min /
max / n over replicates; a sweep's table of final metrics; single replicates on demand (the event
stream is app.services.stream). Answers are columnar ({"epochs": [...], "mean": [...]}) and cached per
process: a curve is recomputed when its config's runs change, a table when a run status does."""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, func, or_, select

from app.datasets import CLASS_NAMES, DATASETS, DatasetUnavailable, ImageData, load, locate
from app.db import read_session
from app.errors import NotFound
from app.models import Config, Metric, Run, RunStatus, Sweep
from app.services import stats
from app.services.stream import snapshot_session, sweep_seqs
from app.services.sweeps import get_sweep_row

CURVE_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
FINAL_KEYS = ("accuracy", "val_accuracy")
T = TypeVar("T")


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


class _Memo:
    """A small LRU of answers, each kept with the version (what it was computed from) it holds for.
    Keys start with the engine's URL: one process may serve several databases (tests do)."""

    def __init__(self, size: int = 512) -> None:
        self.size, self.items, self.lock = size, OrderedDict[Any, tuple[Any, Any]](), threading.Lock()

    def peek(self, key: Any) -> tuple[Any, Any] | None:
        with self.lock:
            return self.items.get(key)

    def put(self, key: Any, version: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = (version, value)
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def get(self, key: Any, version: Any, compute: Callable[[], T]) -> T:
        hit = self.peek(key)
        if hit is not None and hit[0] == version:
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        self.put(key, version, value)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


memo = _Memo()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


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


def _scope(sweep_id: int | None, config_ids: Sequence[int] | None) -> Any:
    return Scope(sweep_id, tuple(config_ids) if config_ids is not None else None).where()


class Snapshot:
    """Every run of a scope as (config, last epoch, status) and its sweeps' commit sequences
    (app.services.stream), read in one snapshot. A worker records an epoch's metrics with the run's
    last epoch and a retry deletes them with a status change, so two snapshots, plus the runs of the
    metrics committed between their sequences, tell which configs' curves changed."""

    def __init__(self, seqs: dict[int, int], runs: dict[int, tuple[int, int, str]]) -> None:
        self.seqs, self.runs = seqs, runs
        self.status_digest = hash(frozenset((r, v[2]) for r, v in runs.items()))

    @property
    def cursor(self) -> int | None:
        """Where the stream of the scope's sweep goes on from; None for configs of several sweeps."""
        return next(iter(self.seqs.values())) if len(self.seqs) == 1 else None

    def changed_configs(self, engine: Engine, older: Snapshot) -> set[int]:
        changed = {(self.runs.get(r) or older.runs[r])[0] for r in self.runs.keys() | older.runs.keys()
                   if self.runs.get(r) != older.runs.get(r)}
        moved = [and_(Metric.sweep_id == sweep, Metric.seq > older.seqs.get(sweep, 0), Metric.seq <= seq)
                 for sweep, seq in self.seqs.items() if seq > older.seqs.get(sweep, 0)]
        if moved:
            with read_session(engine) as s:
                written = s.scalars(select(Metric.run_id).distinct().where(or_(*moved))).all()
            changed |= {self.runs[r][0] for r in written if r in self.runs}
        return changed

    def runs_per_config(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for config_id, _, _ in self.runs.values():
            counts[config_id] += 1
        return counts


def snapshot(engine: Engine, scope: Scope) -> Snapshot:
    with snapshot_session(engine) as s:
        rows = s.execute(select(Run.id, Run.sweep_id, Run.config_id, Run.last_epoch, Run.status)
                         .where(scope.where())).all()
        seqs = sweep_seqs(s, [scope.sweep_id] if scope.sweep_id is not None else [r.sweep_id for r in rows])
    return Snapshot(seqs, {r.id: (r.config_id, r.last_epoch, r.status) for r in rows})


# ---- configs ---------------------------------------------------------------------------------

def _config_rows(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
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

    rows = memo.get((engine.url, "configs", scope), None, read)
    if scope.config_ids is not None and scope.sweep_id is None:
        found = {c["id"]: c for c in rows}
        missing = [i for i in scope.config_ids if i not in found]
        if missing:
            memo.put((engine.url, "configs", scope), "stale", rows)
            raise NotFound(f"config {missing[0]} not found")
        rows = [found[i] for i in scope.config_ids]
    return rows


def _with_counts(rows: list[dict[str, Any]], snap: Snapshot) -> list[dict[str, Any]]:
    counts = snap.runs_per_config()
    return [{**c, "runs": counts.get(c["id"], 0)} for c in rows]


def config_infos(engine: Engine, sweep_id: int | None = None,
                 config_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Configs of a sweep (by position) or the given configs (in the given order), with sweep names
    and replicate counts."""
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    rows = _config_rows(engine, scope)
    return _with_counts(rows, snapshot(engine, scope))


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

def _aggregate_key(engine: Engine, key: str, scope: Scope) -> dict[int, dict[str, list[Any]]]:
    """Per config, the epoch-by-epoch mean/std/min/max/n of KEY over its replicates.

    The variance is two-pass (sum of squared deviations from the group mean), not E[x^2] - E[x]^2,
    which cancels catastrophically when replicates agree and then depends on the summation order."""
    rows_q = (select(Run.config_id.label("cid"), Metric.epoch.label("ep"), Metric.value.label("v"))
              .join(Run, Run.id == Metric.run_id).where(scope.where(), Metric.key == key)).cte("vals")
    means = (select(rows_q.c.cid, rows_q.c.ep, func.avg(rows_q.c.v).label("m"))
             .group_by(rows_q.c.cid, rows_q.c.ep)).cte("means")
    dev = rows_q.c.v - means.c.m
    with read_session(engine) as s:
        rows = s.execute(
            select(rows_q.c.cid, rows_q.c.ep, func.count(rows_q.c.v), means.c.m, func.min(rows_q.c.v),
                   func.max(rows_q.c.v), func.sum(dev * dev))
            .join(means, and_(means.c.cid == rows_q.c.cid, means.c.ep == rows_q.c.ep))
            .group_by(rows_q.c.cid, rows_q.c.ep, means.c.m)
            .order_by(rows_q.c.cid, rows_q.c.ep)
        ).all()
    out: dict[int, dict[str, list[Any]]] = {}
    for config_id, epoch, n, mean, lo, hi, squares in rows:
        col = out.setdefault(config_id, {"epochs": [], "mean": [], "std": [], "min": [], "max": [], "n": []})
        std = math.sqrt(squares / (n - 1)) if n >= 2 and squares is not None else None
        col["epochs"].append(epoch)
        col["n"].append(n)
        for name, v in (("mean", mean), ("std", std), ("min", lo), ("max", hi)):
            col[name].append(_num(v))
    return out


_generation = itertools.count(1)


def _aggregates_of(engine: Engine, key: str, scope: Scope,
                   snap: Snapshot) -> tuple[int, dict[int, dict[str, list[Any]]]]:
    """KEY's curves of every config in SCOPE, recomputing only the configs whose runs changed; with
    a generation number that changes whenever the curves do."""
    hit = memo.peek((engine.url, "agg", scope, key))
    if hit is None:
        value = _aggregate_key(engine, key, scope)
    else:
        older, (generation, value) = hit
        changed = snap.changed_configs(engine, older)
        if not changed:
            memo.put((engine.url, "agg", scope, key), snap, (generation, value))
            return generation, value
        fresh = _aggregate_key(engine, key, Scope(scope.sweep_id, tuple(sorted(changed))))
        value = {c: col for c, col in value.items() if c not in changed} | fresh
    generation = next(_generation)
    memo.put((engine.url, "agg", scope, key), snap, (generation, value))
    return generation, value


def _aggregates(engine: Engine, keys: Sequence[str], sweep_id: int | None, config_ids: Sequence[int] | None,
                as_json: bool) -> Any:
    if sweep_id is not None:
        get_sweep_row(engine, sweep_id)
    scope = Scope(sweep_id, None) if sweep_id is not None else Scope(None, tuple(config_ids or ()))
    rows = _config_rows(engine, scope)
    snap = snapshot(engine, scope)
    agg_scope, agg_snap = scope, snap
    if sweep_id is not None and config_ids is not None:
        wanted = set(config_ids)
        rows = [c for c in rows if c["id"] in wanted]
        if any(memo.peek((engine.url, "agg", scope, key)) is None for key in keys):
            # No curves of the whole sweep to cut from: compute only these configs' (a page shows a few).
            agg_scope = Scope(sweep_id, tuple(sorted(wanted)))
            agg_snap = Snapshot(snap.seqs, {r: v for r, v in snap.runs.items() if v[0] in wanted})

    curves = {key: _aggregates_of(engine, key, agg_scope, agg_snap) for key in keys}

    def build() -> dict[str, Any]:
        series: dict[str, dict[str, Any]] = {str(c["id"]): {} for c in rows}
        for key, (_, by_config) in curves.items():
            for config_id, col in by_config.items():
                if str(config_id) in series:
                    series[str(config_id)][key] = col
        return {"keys": list(keys), "configs": _with_counts(rows, snap), "series": series}

    # The curves hold at least what committed up to the snapshot's cursor (they were read after it,
    # or have not changed since), so a stream from it misses nothing.
    if not as_json:
        return {"cursor": snap.cursor, **build()}
    subset = tuple(c["id"] for c in rows) if sweep_id is not None and config_ids is not None else None
    version = (snap.status_digest, tuple(generation for generation, _ in curves.values()))
    body = memo.get((engine.url, "agg-json", scope, subset, tuple(keys)), version, lambda: _dumps(build()))
    return b'{"cursor":' + _dumps(snap.cursor) + b"," + body[1:]  # kept while curves hold; the cursor fresh


def aggregate_series(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
                     config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Columnar curves per config and key, aggregated over replicates, with the cursor to stream from.
    CONFIG_IDS alone: those configs from any sweeps; with SWEEP_ID: only those of the sweep."""
    return _aggregates(engine, keys, sweep_id, config_ids, as_json=False)  # type: ignore[no-any-return]


def aggregate_json(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
                   config_ids: Sequence[int] | None = None) -> bytes:
    """`aggregate_series` serialised; many open pages share one computation."""
    return _aggregates(engine, keys, sweep_id, config_ids, as_json=True)  # type: ignore[no-any-return]


# ---- single replicates -----------------------------------------------------------------------

def run_series(engine: Engine, keys: Sequence[str], sweep_id: int | None = None,
               config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Every replicate's own series for KEYS (columnar) with the cursor to stream from (read in the
    same snapshot; None for configs of several sweeps)."""
    with snapshot_session(engine) as s:
        runs = s.execute(select(Run.id, Run.sweep_id, Run.config_id, Run.seed, Run.status)
                         .where(_scope(sweep_id, config_ids)).order_by(Run.id)).all()
        seqs = sweep_seqs(s, [sweep_id] if sweep_id is not None else [r.sweep_id for r in runs])
        rows = s.execute(
            select(Metric.run_id, Metric.key, Metric.epoch, Metric.value)
            .join(Run, Run.id == Metric.run_id)
            .where(_scope(sweep_id, config_ids), Metric.key.in_(list(keys)))
            .order_by(Metric.run_id, Metric.key, Metric.epoch)
        ).all()
    cursor = next(iter(seqs.values())) if len(seqs) == 1 else None
    out: dict[int, dict[str, Any]] = {
        r.id: {"run_id": r.id, "config_id": r.config_id, "seed": r.seed, "status": r.status,
               "series": {k: {"epochs": [], "values": []} for k in keys}}
        for r in runs
    }
    for run_id, key, epoch, value in rows:
        sr = out[run_id]["series"][key]
        sr["epochs"].append(epoch)
        sr["values"].append(_num(value))
    return {"cursor": cursor, "runs": list(out.values())}


def sweep_run_series(engine: Engine, sweep_id: int, keys: list[str]) -> dict[str, Any]:
    """Every run's series of a sweep for KEYS, columnar, with the cursor to stream from."""
    get_sweep_row(engine, sweep_id)
    return {"sweep_id": sweep_id, "configs": sweep_configs(engine, sweep_id),
            **run_series(engine, keys, sweep_id=sweep_id)}


# ---- final metrics ---------------------------------------------------------------------------

def _final_rows(engine: Engine, scope: Scope) -> dict[str, Any]:
    done = and_(scope.where(), Run.status == RunStatus.SUCCEEDED.value)
    with read_session(engine) as s:
        finals = s.execute(
            select(Run.id, Run.config_id, Run.seed, Metric.key, Metric.value)
            .join(Metric, and_(Metric.run_id == Run.id, Metric.epoch == Run.epochs))
            .where(done, Metric.key.in_(FINAL_KEYS)).order_by(Run.id)).all()
        bests = s.execute(
            select(Run.id, Metric.key, func.max(Metric.value))
            .join(Metric, Metric.run_id == Run.id)
            .where(done, Metric.key.in_(FINAL_KEYS)).group_by(Run.id, Metric.key)).all()
        curves = s.execute(
            select(Run.config_id, Metric.epoch, func.avg(Metric.value))
            .join(Metric, Metric.run_id == Run.id)
            .where(done, Metric.key == "val_accuracy").group_by(Run.config_id, Metric.epoch)
            .order_by(Run.config_id, Metric.epoch)).all()
        seconds = s.execute(select(Run.config_id, Run.train_seconds).where(done)).all()
    return {"finals": finals, "bests": bests, "curves": curves, "seconds": seconds}


def _table(engine: Engine, scope: Scope, configs: list[dict[str, Any]], snap: Snapshot) -> list[dict[str, Any]]:
    raw = _final_rows(engine, scope)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: {s.value: 0 for s in RunStatus})
    for config_id, _, status in snap.runs.values():
        counts[config_id][status] += 1
    final: dict[tuple[int, str], list[tuple[int, int, float | None]]] = defaultdict(list)
    config_of: dict[int, int] = {}
    for run_id, config_id, seed, key, value in raw["finals"]:
        final[(config_id, key)].append((run_id, seed, _num(value)))
        config_of[run_id] = config_id
    best: dict[tuple[int, str], list[float | None]] = defaultdict(list)
    for run_id, key, value in raw["bests"]:
        if run_id in config_of:
            best[(config_of[run_id], key)].append(_num(value))
    curve: dict[int, tuple[list[int], list[float | None]]] = defaultdict(lambda: ([], []))
    for config_id, epoch, mean in raw["curves"]:
        curve[config_id][0].append(epoch)
        curve[config_id][1].append(_num(mean))
    wall: dict[int, list[float]] = defaultdict(list)
    for config_id, train_seconds in raw["seconds"]:
        wall[config_id].append(train_seconds or 0.0)
    rows = []
    for c in configs:
        i = c["id"]
        row: dict[str, Any] = {**c, "status_counts": counts[i], "done": counts[i][RunStatus.SUCCEEDED.value],
                               "final": {}, "best": {}}
        for key in FINAL_KEYS:
            values = final.get((i, key), [])
            row["final"][key] = {**stats.summarize([v for _, _, v in values]).as_dict(),
                                 "values": [v for _, _, v in values], "runs": [r for r, _, _ in values],
                                 "seeds": [seed for _, seed, _ in values]}
            bests = best.get((i, key), [])
            row["best"][key] = {**stats.summarize(bests).as_dict(), "values": bests}
        epochs, means = curve[i]
        row["epochs_to_99"] = stats.epochs_to_fraction(epochs, means) if epochs else None
        secs = wall.get(i, [])
        row["wall_seconds"] = {"mean": math.fsum(secs) / len(secs) if secs else None, "total": math.fsum(secs)}
        rows.append(row)
    return rows


def final_table(engine: Engine, sweep_id: int | None = None,
                config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """One row per config: its runs by status, final and best accuracy over succeeded replicates
    (mean, std, 95% CI and the values), epochs until their mean val_accuracy reaches 99% of its
    final value, wall time. Depends only on run statuses, so it is recomputed when one changes."""
    if sweep_id is not None:
        get_sweep_row(engine, sweep_id)
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    configs = _config_rows(engine, scope)
    snap = snapshot(engine, scope)
    rows = memo.get((engine.url, "table", scope), snap.status_digest,
                    lambda: _table(engine, scope, _with_counts(configs, snap), snap))
    return {"sweep_id": sweep_id, "axes": describe_axes([c["params"] for c in configs]), "configs": rows}


def final_table_json(engine: Engine, sweep_id: int) -> bytes:
    """`final_table` of a sweep serialised, cached while its run statuses hold."""
    get_sweep_row(engine, sweep_id)
    snap = snapshot(engine, Scope(sweep_id))
    return memo.get((engine.url, "table-json", sweep_id), snap.status_digest,
                    lambda: _dumps(final_table(engine, sweep_id)))


def compare_configs(engine: Engine, config_ids: Sequence[int]) -> dict[str, Any]:
    """The final-metric rows of CONFIG_IDS and, for each config after the first, Welch's comparison
    of its final val_accuracy with the first one's."""
    table = final_table(engine, config_ids=config_ids)
    rows = table["configs"]
    comparisons = []
    if len(rows) >= 2:
        ref = rows[0]
        for other in rows[1:]:
            cmp = stats.welch(ref["final"]["val_accuracy"]["values"], other["final"]["val_accuracy"]["values"])
            comparisons.append({"a": ref["id"], "b": other["id"], **cmp.as_dict(),
                                "sentence": stats.describe_difference(display_name(ref), display_name(other), cmp)})
    return {"configs": rows, "comparisons": comparisons}


def single_configs(engine: Engine, sweep_ids: Sequence[int]) -> dict[int, int]:
    """For each of SWEEP_IDS that has exactly one config (no grid), that config's id."""
    if not sweep_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(select(Config.sweep_id, func.min(Config.id)).where(Config.sweep_id.in_(list(sweep_ids)))
                         .group_by(Config.sweep_id).having(func.count() == 1)).all()
    return {sweep_id: config_id for sweep_id, config_id in rows}


def display_name(config: dict[str, Any]) -> str:
    """'q4 adam' for a one-config sweep, 'q6 hidden width · hidden=[64]' otherwise."""
    return config["sweep_name"] if config["label"] == "base" else f"{config['sweep_name']} · {config['label']}"


def best_configs(engine: Engine, sweep_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per sweep, its config with the highest mean final val_accuracy over succeeded replicates."""
    if not sweep_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(
            select(Run.sweep_id, Run.config_id, func.count(Metric.value), func.avg(Metric.value),
                   func.avg(Metric.value * Metric.value))
            .join(Metric, and_(Metric.run_id == Run.id, Metric.epoch == Run.epochs, Metric.key == "val_accuracy"))
            .where(Run.sweep_id.in_(list(sweep_ids)), Run.status == RunStatus.SUCCEEDED.value)
            .group_by(Run.sweep_id, Run.config_id)).all()
        labels = dict(s.execute(select(Config.id, Config.label).where(Config.sweep_id.in_(list(sweep_ids)))).all())
    out: dict[int, dict[str, Any]] = {}
    for sweep_id, config_id, n, mean, mean_sq in rows:
        if mean is None or (sweep_id in out and out[sweep_id]["mean"] >= mean):
            continue
        std = math.sqrt(max(0.0, mean_sq - mean * mean) * n / (n - 1)) if n >= 2 else None
        out[sweep_id] = {"config_id": config_id, "label": labels.get(config_id, ""), "n": n, "mean": mean, "std": std}
    return out


# ---- axes of the sweep chart ------------------------------------------------------------------

WIDTH_PATHS = frozenset({"model.hidden", "batch_size", "limit.train", "limit.test"})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def describe_axis(path: str, values: list[Any]) -> dict[str, Any]:
    """How to draw a swept setting on an x axis: log2 for widths and sizes, log10 for rates that span
    decades, linear for other numbers, else categories. A list value such as [32, 64] that varies in
    one position is drawn at that position's number and labelled with the whole list."""
    labels = [_label(v) for v in values]
    axis = {"path": path, "kind": "category", "values": values, "x": labels, "labels": labels, "title": path}
    if values and all(_is_number(v) for v in values):
        xs = [float(v) for v in values]
    elif values and all(isinstance(v, list) and v and all(_is_number(w) for w in v) for v in values) \
            and len({len(v) for v in values}) == 1:
        varying = [i for i in range(len(values[0])) if len({v[i] for v in values}) > 1]
        if len(varying) != 1:
            return axis
        k = varying[0]
        xs = [float(v[k]) for v in values]
        layer = f"width of layer {k + 1}" if path == "model.hidden" else f"item {k + 1}"
        axis["title"] = f"{path} ({layer})"
    else:
        return axis
    positive = all(x > 0 for x in xs)
    powers_of_two = all(x > 0 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0 for x in xs)
    if positive and (path in WIDTH_PATHS or (powers_of_two and len(xs) > 2)):
        kind = "log2"
    elif positive and max(xs) / min(xs) >= 10:
        kind = "log10"
    else:
        kind = "linear"
    return {**axis, "kind": kind, "x": xs}


def describe_axes(params: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One axis per swept setting, its distinct values in grid order."""
    values: dict[str, dict[str, Any]] = {}
    for p in params:
        for path, v in p.items():
            values.setdefault(path, {}).setdefault(json.dumps(v, sort_keys=True), v)
    return [describe_axis(path, list(vs.values())) for path, vs in values.items()]


# ---- datasets ---------------------------------------------------------------------------------

MAX_IMAGES = 100


def _dataset(name: str, data_dir: Path) -> ImageData:
    """The dataset from the server's data directory (never downloaded by the server)."""
    if name not in DATASETS:
        raise NotFound(f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}")
    if locate(name, data_dir) is None:
        raise NotFound(f"dataset {name!r} is not on this server: no {Path(data_dir) / (name + '.npz')}. "
                       f"Put {name}.npz (keys x_train, y_train, x_test, y_test) in SWEEPLAB_DATA_DIR.")
    try:
        return load(name, data_dir)
    except DatasetUnavailable as exc:
        raise NotFound(str(exc)) from None


def dataset_summary(name: str, data_dir: Path) -> dict[str, Any]:
    """Class names and the number of examples of each class in train and test."""
    data = _dataset(name, data_dir)
    out: dict[str, Any] = {"name": name, "class_names": CLASS_NAMES[name], "shape": list(data.x_train.shape[1:])}
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        counts = [int((y == k).sum()) for k in range(len(CLASS_NAMES[name]))]
        out[split] = {"n": len(y), "counts": counts}
    return out


def dataset_images(name: str, data_dir: Path, split: str, start: int, count: int) -> dict[str, Any]:
    """Images START..START+COUNT of a split as raw 0-255 pixels (each image one flat row) with labels."""
    data = _dataset(name, data_dir)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    stop = min(len(y), start + min(count, MAX_IMAGES))
    return {"name": name, "split": split, "start": start, "shape": list(x.shape[1:]),
            "class_names": CLASS_NAMES[name], "labels": [int(v) for v in y[start:stop]],
            "images": [row.tolist() for row in x[start:stop].reshape(stop - start if stop > start else 0, -1)]}
