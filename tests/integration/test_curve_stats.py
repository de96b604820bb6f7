"""The aggregates the database keeps as epochs commit (migration 0007): every cell of `curve_stats`
and every row of `run_finals` equals what the raw metric rows say, after inserts (one row or many
per statement, inf, -inf and NaN among them), deletes (a restart, a retry), a run moving config, and
on PostgreSQL concurrent writers of the same cells racing a recompute."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

from app.db import read_session, write_session
from app.models import Config, CurveStat, Metric, Run, RunFinal
from app.services import charts
from app.services.sweeps import create_sweep, parse_spec

SPEC = {"name": "cells", "dataset": "mnist", "epochs": 3, "replicates": 4,
        "grid": {"optimizer.learning_rate": [0.1, 0.01]}}


def _runs(engine: Engine, replicates: int = 4) -> list[tuple[int, int]]:
    sweep = create_sweep(engine, parse_spec({**SPEC, "replicates": replicates}), 10_000, 3)
    with read_session(engine) as s:
        return [tuple(r) for r in s.execute(select(Run.id, Run.config_id).where(Run.sweep_id == sweep.id)
                                            .order_by(Run.id)).all()]


def _value(rng: random.Random) -> float | None:
    """Mostly values that agree to 1e-9 (where E[x^2] - E[x]^2 would cancel), some NaN (NULL), inf, -inf."""
    r = rng.random()
    if r < 0.05:
        return None
    if r < 0.08:
        return math.inf
    if r < 0.10:
        return -math.inf
    return 0.9 + rng.random() * 1e-9


def _rows(run_id: int, epochs: range, rng: random.Random,
          keys: tuple[str, ...] = ("loss", "acc")) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "key": k, "epoch": e, "value": _value(rng), "created_at": 0.0}
            for k in keys for e in epochs]


def assert_matches_raw(engine: Engine) -> None:
    with read_session(engine) as s:
        raw = s.execute(select(Run.config_id, Metric.run_id, Metric.key, Metric.epoch, Metric.value)
                        .join(Run, Run.id == Metric.run_id)).all()
        cells = {(c.config_id, c.key, c.epoch): c for c in s.scalars(select(CurveStat))}
        finals = {(f.run_id, f.key): f for f in s.scalars(select(RunFinal))}
    values: dict[tuple[int, str, int], list[float]] = {}
    for config_id, _, key, epoch, value in raw:
        if value is not None:
            values.setdefault((config_id, key, epoch), []).append(value)
    assert set(cells) == set(values)
    for cell, vs in values.items():
        finite = np.array([v for v in vs if math.isfinite(v)])
        c = cells[cell]
        assert (c.n, c.pos_inf, c.neg_inf) == (finite.size, vs.count(math.inf), vs.count(-math.inf)), cell
        if finite.size:
            mean = float(finite.mean())
            assert c.mean == pytest.approx(mean, rel=1e-15, abs=1e-15)
            assert c.m2 == pytest.approx(float(((finite - mean) ** 2).sum()), rel=1e-6, abs=1e-30), cell
            assert (c.lo, c.hi) == (finite.min(), finite.max())
        else:
            assert (c.mean, c.lo, c.hi) == (None, None, None)
    last: dict[tuple[int, str], tuple[int, float | None]] = {}
    best: dict[tuple[int, str], float] = {}
    for _, run_id, key, epoch, value in raw:
        if (run_id, key) not in last or epoch > last[(run_id, key)][0]:
            last[(run_id, key)] = (epoch, value)
        if value is not None:
            best[(run_id, key)] = max(best.get((run_id, key), -math.inf), value)
    assert set(finals) == set(last)
    for pair, (epoch, value) in last.items():
        assert (finals[pair].epoch, finals[pair].value, finals[pair].best) == (epoch, value, best.get(pair)), pair


def test_cells_and_finals_follow_inserts_deletes_and_moves(engine: Engine) -> None:
    rng = random.Random(1)
    runs = _runs(engine)
    with write_session(engine) as s:  # many rows of many runs in one statement
        s.execute(insert(Metric), [row for run_id, _ in runs[:5] for row in _rows(run_id, range(4), rng)])
    for run_id, _ in runs[5:]:  # one run per statement, and one row per statement
        with write_session(engine) as s:
            s.execute(insert(Metric), _rows(run_id, range(2), rng))
        with write_session(engine) as s:
            s.execute(insert(Metric).values(_rows(run_id, range(2, 3), rng, keys=("loss",))[0]))
    assert_matches_raw(engine)
    with write_session(engine) as s:  # a restart: one run's epochs go
        s.execute(delete(Metric).where(Metric.run_id == runs[0][0]))
    assert_matches_raw(engine)
    with write_session(engine) as s:  # a retry of two runs, and epochs of two runs at once
        s.execute(delete(Metric).where(Metric.run_id.in_([runs[1][0], runs[6][0]]), Metric.epoch == 2))
    assert_matches_raw(engine)
    with write_session(engine) as s:  # an MLflow run moves to another config with its epochs
        s.execute(update(Run).where(Run.id == runs[2][0]).values(config_id=runs[-1][1]))
    assert_matches_raw(engine)
    with write_session(engine) as s:  # its epochs written again after the restart
        s.execute(insert(Metric), _rows(runs[0][0], range(3), rng))
    assert_matches_raw(engine)


def test_the_charts_read_the_cells_as_the_raw_rows_aggregate(engine: Engine) -> None:
    """mean/std/min/max/n per epoch as numpy computes them from the rows; null where an inf is."""
    rng = random.Random(2)
    runs = _runs(engine)
    with write_session(engine) as s:
        s.execute(insert(Metric), [row for run_id, _ in runs for row in _rows(run_id, range(3), rng)])
    with read_session(engine) as s:
        sweep_id = s.scalar(select(Config.sweep_id).where(Config.id == runs[0][1]))
        raw = s.execute(select(Run.config_id, Metric.epoch, Metric.value).join(Run, Run.id == Metric.run_id)
                        .where(Metric.key == "loss")).all()
    got = charts.aggregate_series(engine, ["loss"], sweep_id=sweep_id)["series"]
    for config_id in {c for _, c in runs}:
        col = got[str(config_id)]["loss"]
        for i, epoch in enumerate(col["epochs"]):
            vs = [v for c, e, v in raw if c == config_id and e == epoch and v is not None]
            assert col["n"][i] == len(vs)
            if any(math.isinf(v) for v in vs):
                assert (col["mean"][i], col["std"][i]) == (None, None)
            else:
                assert col["mean"][i] == pytest.approx(float(np.mean(vs)), rel=1e-15)
                assert col["std"][i] == pytest.approx(float(np.std(vs, ddof=1)), rel=1e-6)
                assert (col["min"][i], col["max"][i]) == (min(vs), max(vs))


def test_concurrent_writers_and_a_restart_of_one_config_lose_nothing(engine: Engine) -> None:
    """PostgreSQL: four writers commit epochs of the same cells at once while a fifth restarts runs
    (deletes their epochs, which recomputes the cells); at the end every cell equals its rows."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    runs = _runs(engine, replicates=12)
    ours = [r for r, c in runs if c == runs[0][1]][:10]
    errors: list[BaseException] = []

    def write(run_ids: list[int], seed: int) -> None:
        rng = random.Random(seed)
        try:
            for epoch in range(8):
                for run_id in run_ids:
                    with write_session(engine) as s:
                        s.execute(insert(Metric), _rows(run_id, range(epoch, epoch + 1), rng))
        except BaseException as exc:
            errors.append(exc)

    def restart(run_ids: list[int]) -> None:
        try:
            for _ in range(6):
                for run_id in run_ids:
                    with write_session(engine) as s:
                        s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.epoch < 3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(ours[i::4], i)) for i in range(4)]
    threads.append(threading.Thread(target=restart, args=(ours[:3],)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with read_session(engine) as s:
        assert s.scalar(text("SELECT count(*) FROM metrics")) > 0
    assert_matches_raw(engine)
