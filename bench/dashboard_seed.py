"""The dashboard benchmark's data: a grid sweep of CONFIGS configs x REPLICATES seeds, seeded straight
into the database with plain INSERTs into metrics (so every trigger on the table fires: the commit
sequence of migration 0002 and any aggregates a later migration keeps), every run succeeded but the
live ones, which stay queued at an early epoch for the benchmark's writers to claim and train on."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update

from app.db import get_engine, write_session
from app.metrics import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS
from app.migrate import migrate
from app.models import Config, Metric, Run, RunStatus, SweepSeq
from app.services.sweeps import create_sweep, parse_spec

KEYS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
WIDTHS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
RATES = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001, 3e-5, 1e-5, 3e-6, 1e-6]
BATCH = 50_000


@dataclass
class Seeded:
    sweep_id: int
    runs: int
    configs: int
    epochs: int
    config_ids: list[int]
    metric_rows: int
    seconds: float
    live_runs: list[int] = field(default_factory=list)  # queued at LIVE_EPOCH, in the configs a page draws
    live_epoch: int = 0
    cursor: int = 0  # the sweep's commit sequence once seeded (where a page's stream starts)

    def public(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "runs": self.runs, "configs": self.configs, "epochs": self.epochs,
                "metric_rows": self.metric_rows, "live_runs": len(self.live_runs), "live_epoch": self.live_epoch,
                "seed_seconds": self.seconds}


def curve(rng: np.random.Generator, position: int, epochs: int) -> dict[str, np.ndarray]:
    """Plausible curves of KEYS for epochs 0..EPOCHS of a config at POSITION (later ones better)."""
    e = np.arange(epochs + 1)
    top = 0.85 + 0.12 * (1 - math.exp(-position / 10)) + rng.normal(0, 0.004)
    acc = 0.1 + (top - 0.1) * (1 - np.exp(-0.4 * e)) + rng.normal(0, 0.002, e.size)
    val = acc - 0.01 + rng.normal(0, 0.003, e.size)
    return {LOSS: 2.3 * (1 - acc), ACCURACY: acc, VAL_LOSS: 2.3 * (1 - val), VAL_ACCURACY: val}


def grid(configs: int) -> tuple[list[list[int]], list[float]]:
    """Widths x learning rates making about CONFIGS configs (widths outer: the first configs share
    a width, so a pack of live runs holds several of them)."""
    widths = WIDTHS[: max(1, min(len(WIDTHS), configs))]
    rates = RATES[: max(1, min(len(RATES), math.ceil(configs / len(widths))))]
    return [[w] for w in widths], rates


def seed(url: str, runs: int, configs: int, epochs: int, live_configs: int = 0, live_per_config: int = 0,
         live_epoch: int = 2) -> Seeded:
    """A fresh database at URL with one sweep of about RUNS runs; LIVE_PER_CONFIG replicates of each of
    the first LIVE_CONFIGS configs stay queued with epochs 0..LIVE_EPOCH stored (a worker that
    claims them goes on from LIVE_EPOCH + 1)."""
    hidden, rates = grid(configs)
    spec = {"name": "dashboard benchmark", "study": "bench", "dataset": "mnist", "epochs": epochs,
            "replicates": max(1, runs // (len(hidden) * len(rates))),
            "grid": {"model.hidden": hidden, "optimizer.learning_rate": rates}}
    engine = get_engine(url)
    migrate(url)
    t0 = time.perf_counter()
    sweep = create_sweep(engine, parse_spec(spec), 1_000_000, 3)
    rng = np.random.default_rng(0)
    with write_session(engine) as s:
        rows = s.execute(select(Run.id, Config.position).join(Config, Config.id == Run.config_id)
                         .where(Run.sweep_id == sweep.id).order_by(Run.id)).all()
        by_position: dict[int, list[int]] = {}
        for run_id, position in rows:
            by_position.setdefault(position, []).append(run_id)
        live = {r for p in sorted(by_position)[:live_configs] for r in by_position[p][:live_per_config]}
        batch: list[dict[str, Any]] = []
        for run_id, position in rows:
            last = live_epoch if run_id in live else epochs
            for key, values in curve(rng, position, epochs).items():
                batch += [{"run_id": run_id, "key": key, "epoch": e, "value": float(values[e]), "created_at": 0.0}
                          for e in range(last + 1)]
            if len(batch) >= BATCH:
                s.execute(insert(Metric), batch)  # plain INSERTs: the metrics table's triggers fire
                batch = []
        if batch:
            s.execute(insert(Metric), batch)
        s.execute(update(Run).where(Run.sweep_id == sweep.id, Run.id.not_in(live)).values(
            status=RunStatus.SUCCEEDED.value, last_epoch=epochs, attempt=1, started_at=1.7e9,
            finished_at=1.7e9 + 60, train_seconds=60.0))
        if live:
            s.execute(update(Run).where(Run.id.in_(live)).values(last_epoch=live_epoch))  # still queued
        n_metrics = int(s.scalar(select(func.count()).select_from(Metric)) or 0)
        config_ids = list(s.scalars(select(Config.id).where(Config.sweep_id == sweep.id).order_by(Config.position)))
    with write_session(engine) as s:
        cursor = int(s.scalar(select(SweepSeq.seq).where(SweepSeq.sweep_id == sweep.id)) or 0)
    return Seeded(sweep.id, len(rows), len(config_ids), epochs, config_ids, n_metrics,
                  round(time.perf_counter() - t0, 1), sorted(live), live_epoch, cursor)
