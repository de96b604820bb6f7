"""What a sweep's runs came to: the table of final metrics per config, comparisons between configs
(Welch's test) and each sweep's best config (the index page). Read from succeeded runs only, each
run's final value as app.services.finals defines it (its largest epoch of the key), so an
answer depends on run statuses alone and is cached while they hold (app.services.memo)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select

from app.config_names import config_name
from app.db import read_session
from app.metrics import FINAL_KEYS, PRIMARY_KEY
from app.models import Config, Metric, Run, RunStatus
from app.numbers import finite_or_none
from app.services import stats
from app.services.axes import describe_axes
from app.services.charts import config_rows, with_counts
from app.services.finals import final_rows_query
from app.services.memo import dumps, memo
from app.services.moments import grouped_moments, sample_std
from app.services.snapshots import Scope, Snapshot, snapshot
from app.services.sweeps import get_sweep_row

SUCCEEDED = RunStatus.SUCCEEDED.value


def _final_rows(engine: Engine, scope: Scope) -> dict[str, Any]:
    done = and_(scope.where(), Run.status == SUCCEEDED)
    with read_session(engine) as s:
        finals = s.execute(final_rows_query(scope.where(), FINAL_KEYS)).all()
        bests = s.execute(
            select(Run.id, Metric.key, func.max(Metric.value))
            .join(Metric, Metric.run_id == Run.id)
            .where(done, Metric.key.in_(FINAL_KEYS)).group_by(Run.id, Metric.key)).all()
        curves = s.execute(
            select(Run.config_id, Metric.epoch, func.avg(Metric.value))
            .join(Metric, Metric.run_id == Run.id)
            .where(done, Metric.key == PRIMARY_KEY).group_by(Run.config_id, Metric.epoch)
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
        final[(config_id, key)].append((run_id, seed, finite_or_none(value)))
        config_of[run_id] = config_id
    best: dict[tuple[int, str], list[float | None]] = defaultdict(list)
    for run_id, key, value in raw["bests"]:
        if run_id in config_of:
            best[(config_of[run_id], key)].append(finite_or_none(value))
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
    rows = memo.get((engine.url, "table", scope), snap.status_digest,
                    lambda: _table(engine, scope, with_counts(configs, snap), snap))
    return {"sweep_id": sweep_id, "axes": describe_axes([c["params"] for c in configs]), "configs": rows}


def final_table_json(engine: Engine, sweep_id: int) -> bytes:
    """`final_table` of a sweep serialised, cached while its run statuses hold."""
    get_sweep_row(engine, sweep_id)
    snap = snapshot(engine, Scope(sweep_id))
    return memo.get((engine.url, "table-json", sweep_id), snap.status_digest,
                    lambda: dumps(final_table(engine, sweep_id)))


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
