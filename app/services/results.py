"""What a sweep's runs came to: the table of final metrics per config, comparisons between configs
(Welch's test) and each sweep's best config (the index page). Read from succeeded runs only, each
run's final value as app.services.finals defines it (its largest epoch of the key), so an
answer depends on run statuses alone and is cached while they hold (app.services.memo)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, select

from app.config_names import config_name
from app.db import read_session
from app.metrics import FINAL_KEYS, PRIMARY_KEY
from app.models import Config, CurveStat, Run, RunFinal, RunStatus
from app.numbers import finite_or_none
from app.services import stats
from app.services.axes import describe_axes
from app.services.charts import config_rows, with_counts
from app.services.finals import final_rows_query
from app.services.incremental import kept_while, parts_of_one, same_statuses
from app.services.memo import dumps, memo
from app.services.moments import grouped_moments, sample_std
from app.services.snapshots import Scope, Snapshot, snapshot
from app.services.sweeps import get_sweep_row

SUCCEEDED = RunStatus.SUCCEEDED.value


def _final_rows(engine: Engine, scope: Scope) -> dict[str, Any]:
    """What the table is made of, from the aggregates the database keeps (migration 0007): each
    succeeded run's final and best values, the mean curve of the primary metric per config (over
    every run that logged each epoch), and the runs' training seconds."""
    done = and_(scope.where(), Run.status == SUCCEEDED)
    configs = select(Run.config_id).where(scope.where()).distinct()
    with read_session(engine) as s:
        finals = s.execute(select(Run.id, Run.config_id, Run.seed, RunFinal.key, RunFinal.value, RunFinal.best)
                           .join(RunFinal, RunFinal.run_id == Run.id)
                           .where(done, RunFinal.key.in_(FINAL_KEYS)).order_by(Run.id)).all()
        cells = s.execute(select(CurveStat.config_id, CurveStat.epoch, CurveStat.mean,
                                 CurveStat.pos_inf + CurveStat.neg_inf)
                          .where(CurveStat.key == PRIMARY_KEY, CurveStat.config_id.in_(configs))
                          .order_by(CurveStat.config_id, CurveStat.epoch)).all()
        seconds = s.execute(select(Run.config_id, Run.train_seconds).where(done)).all()
    curves = [(config_id, epoch, None if infinite else mean) for config_id, epoch, mean, infinite in cells]
    return {"finals": finals, "curves": curves, "seconds": seconds}


def _table(engine: Engine, scope: Scope, configs: list[dict[str, Any]], snap: Snapshot) -> list[dict[str, Any]]:
    raw = _final_rows(engine, scope)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: {s.value: 0 for s in RunStatus})
    for config_id, _, status in snap.runs.values():
        counts[config_id][status] += 1
    final: dict[tuple[int, str], list[tuple[int, int, float | None]]] = defaultdict(list)
    best: dict[tuple[int, str], list[float | None]] = defaultdict(list)
    for run_id, config_id, seed, key, value, best_value in raw["finals"]:
        final[(config_id, key)].append((run_id, seed, finite_or_none(value)))
        best[(config_id, key)].append(finite_or_none(best_value))
    curve: dict[int, tuple[list[int], list[float | None]]] = defaultdict(lambda: ([], []))
    for config_id, epoch, mean in raw["curves"]:
        curve[config_id][0].append(epoch)
        curve[config_id][1].append(finite_or_none(mean))
    wall: dict[int, list[float]] = defaultdict(list)
    for config_id, train_seconds in raw["seconds"]:
        wall[config_id].append(train_seconds or 0.0)
    rows = []
    for c in configs:
        i = c["id"]
        row: dict[str, Any] = {**c, "status_counts": counts[i], "done": counts[i][SUCCEEDED], "final": {}, "best": {}}
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


def _rows(engine: Engine, scope: Scope, configs: list[dict[str, Any]], snap: Snapshot) -> list[dict[str, Any]]:
    """The table's rows, in the order of CONFIGS, cached while the run statuses hold; after a change
    only the rows of the configs whose runs changed since (app.services.incremental) are computed
    again (a run finished: one row, not the sweep's)."""
    def table(only: list[int] | None) -> dict[int, dict[str, Any]]:
        if only is None:
            return {r["id"]: r for r in _table(engine, scope, configs, snap)}
        todo = set(only)
        part = Scope(scope.sweep_id, tuple(only))
        return {r["id"]: r for r in _table(engine, part, [c for c in configs if c["id"] in todo], snap)}

    parts = parts_of_one(engine, (engine.url, "table", scope), snap, table, holds=same_statuses,
                         wanted=[c["id"] for c in configs])
    return list(parts.by_config.values())


def final_table(engine: Engine, sweep_id: int | None = None,
                config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """One row per config: its runs by status, final and best accuracy over succeeded replicates
    (mean, std, 95% CI and the values), epochs until the mean of the primary metric (app.metrics)
    reaches 99% of its final value, wall time. Depends only on run statuses, so it is recomputed
    when one changes."""
    if sweep_id is not None:
        get_sweep_row(engine, sweep_id)
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    configs = config_rows(engine, scope)
    snap = snapshot(engine, scope)
    rows = _rows(engine, scope, with_counts(configs, snap), snap)
    return {"sweep_id": sweep_id, "axes": describe_axes([c["params"] for c in configs]), "configs": rows}


def final_table_json(engine: Engine, sweep_id: int) -> bytes:
    """`final_table` of a sweep serialised, cached while its run statuses hold (and the database is
    the one it was read from, app.services.incremental)."""
    get_sweep_row(engine, sweep_id)
    snap = snapshot(engine, Scope(sweep_id))
    return kept_while((engine.url, "table-json", sweep_id), snap, same_statuses, lambda: _table_json(engine, sweep_id))


def _table_json(engine: Engine, sweep_id: int) -> bytes:
    """dumps(final_table(...)), byte for byte, from each row's JSON: a row kept from the last table
    (its config unchanged, `_rows`) keeps its bytes, so a change serialises the changed rows only
    (10,000 runs: a 1 MB table, 50 ms of json.dumps on a loaded machine)."""
    table = final_table(engine, sweep_id)
    key = (engine.url, "table-rows-json", sweep_id)
    hit = memo.peek(key)
    known: dict[int, tuple[dict[str, Any], bytes]] = hit[1] if hit is not None else {}
    parts = {r["id"]: known[r["id"]] if r["id"] in known and known[r["id"]][0] is r else (r, dumps(r))
             for r in table["configs"]}
    memo.put(key, None, parts)
    return (b'{"sweep_id":' + dumps(table["sweep_id"]) + b',"axes":' + dumps(table["axes"]) + b',"configs":['
            + b",".join(part for _, part in parts.values()) + b"]}")


def _name(config: dict[str, Any]) -> str:
    return config_name(config["sweep_name"], config["label"])


def compare_configs(engine: Engine, config_ids: Sequence[int]) -> dict[str, Any]:
    """The final-metric rows of CONFIG_IDS and, for each config after the first, Welch's comparison
    of its final primary metric with the first one's."""
    rows = final_table(engine, config_ids=config_ids)["configs"]
    comparisons = []
    if len(rows) >= 2:
        ref = rows[0]
        for other in rows[1:]:
            cmp = stats.welch(ref["final"][PRIMARY_KEY]["values"], other["final"][PRIMARY_KEY]["values"])
            comparisons.append({"a": ref["id"], "b": other["id"], **cmp.as_dict(),
                                "sentence": stats.describe_difference(_name(ref), _name(other), cmp)})
    return {"configs": rows, "comparisons": comparisons}


def best_configs(engine: Engine, sweep_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per sweep, its config with the highest mean final primary metric over succeeded replicates,
    with that mean, its sample std (two-pass, app.services.moments) and n."""
    if not sweep_ids:
        return {}
    rows_of = final_rows_query(Run.sweep_id.in_(list(sweep_ids)), [PRIMARY_KEY]).subquery("final_rows")
    finals = (select(Run.sweep_id.label("sweep"), Run.config_id.label("cid"), rows_of.c.value.label("v"))
              .join(rows_of, rows_of.c.id == Run.id)).cte("finals")
    with read_session(engine) as s:
        rows = s.execute(grouped_moments(finals, ["sweep", "cid"])).all()
        labels = dict(s.execute(select(Config.id, Config.label).where(Config.sweep_id.in_(list(sweep_ids)))).all())
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        mean = finite_or_none(r.mean)
        if mean is None or (r.sweep in out and out[r.sweep]["mean"] >= mean):
            continue
        out[r.sweep] = {"config_id": r.cid, "label": labels.get(r.cid, ""), "n": r.n, "mean": mean,
                        "std": finite_or_none(sample_std(r.n, r.squares))}
    return out
