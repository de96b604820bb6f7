"""Early stopping (issue 13) through the real queue: the ci, median and asha rules decided where
epochs are recorded, at most once per config, fenced, read by a pack on another worker; pruned runs
keep their epochs, their pack mates train as if alone (real Keras), retry resumes them."""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine, select

from app.config import Settings
from app.db import read_session
from app.main import create_app
from app.models import Config, RunEvent, RunStatus
from app.services.decisions import sweep_decisions
from app.services.pruning import after_epoch
from app.services.queue import Claim, WriteOutcome, claim_runs, finish_run, record_epoch
from app.services.sweeps import read_sweep, retry_failed
from app.spec import TrainSpec
from tests.conftest import make_settings
from tests.factories import events_of, make_sweep, metric_rows, runs_of
from worker.fake_trainer import FakeTrainer
from worker.main import Worker
from worker.trainer import EpochMetrics, PreparedData, State

PRUNE = {"method": "ci", "metric": "val_accuracy", "min_epochs": 2}
NARROW = [0.294, 0.304, 0.344, 0.294]  # epoch-2 val_accuracy of 4 seeds of width 2 on MNIST subsets (measured)
WIDE = [0.882, 0.884, 0.892, 0.886]  # and of width 64


def record(engine: Engine, claims: list[Claim], epoch: int, values: list[float]) -> list[WriteOutcome]:
    return [record_epoch(engine, c, epoch, {"val_accuracy": v}, None, 30.0)
            for c, v in zip(claims, values, strict=True)]


def pruned_events(engine: Engine, sweep_id: int) -> list[tuple[int, int | None, str | None]]:
    with read_session(engine) as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(RunEvent.run_id, RunEvent.epoch, RunEvent.message).where(RunEvent.kind == "pruned")
            .order_by(RunEvent.run_id))]


def two_packs(engine: Engine, epochs: int = 6, **prune: Any) -> tuple[int, list[Claim], list[Claim]]:
    sweep = make_sweep(engine, name="prune", epochs=epochs, grid={"model.hidden": [[2], [64]]}, replicates=4,
                       prune={**PRUNE, **prune})
    narrow, wide = claim_runs(engine, "worker-a", 10, 30.0), claim_runs(engine, "worker-b", 10, 30.0)
    assert len(narrow) == len(wide) == 4 and narrow[0].config_id != wide[0].config_id
    return sweep.id, narrow, wide


def one_sided(values: list[float], level: float) -> tuple[float, float]:
    half = scipy_stats.t.isf(level, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return statistics.fmean(values) - half, statistics.fmean(values) + half


def test_a_config_pruned_on_another_workers_data_stops_at_its_next_write(settings: Settings, engine: Engine) -> None:
    sweep_id, narrow, wide = two_packs(engine)
    for epoch in (1, 2):
        assert record(engine, narrow, epoch, [v - 0.01 * (2 - epoch) for v in NARROW]) == [WriteOutcome.OK] * 4
    assert after_epoch(engine, narrow, 1) == set() and after_epoch(engine, narrow, 2) == set()  # width 64 lags
    record(engine, wide, 1, [v - 0.05 for v in WIDE])
    assert after_epoch(engine, wide, 1) == set()  # before min_epochs
    record(engine, wide, 2, WIDE)
    assert after_epoch(engine, wide, 2) == set()  # the best goes on; width 2 is pruned in the database
    # the decision, computed here: one-sided bounds at 0.05 / (2 configs x 2 x 4 looks) for 6 epochs
    level = 0.05 / (2 * 2 * 4)
    assert one_sided(NARROW, level)[1] < one_sided(WIDE, level)[0]
    runs = {r.id: r for r in runs_of(engine, sweep_id)}
    for c in narrow:
        run = runs[c.run_id]
        assert run.status == RunStatus.PRUNED.value and run.last_epoch == 2 and run.finished_at is not None
        assert run.error is not None and run.error.startswith("pruned at epoch 2: upper bound ")
        assert [e for k, e, _ in metric_rows(engine, c.run_id)] == [1, 2]  # its epochs are kept
    # worker a learns at its next fenced write and writes nothing more for those runs
    assert record(engine, narrow, 3, NARROW) == [WriteOutcome.LOST] * 4
    assert after_epoch(engine, narrow, 3) == {c.run_id for c in narrow}  # told again; it holds none: decides nothing
    assert all(max(e for _, e, _ in metric_rows(engine, c.run_id)) == 2 for c in narrow)
    for epoch in range(3, 7):
        assert record(engine, wide, epoch, WIDE) == [WriteOutcome.OK] * 4
        assert after_epoch(engine, wide, epoch) == set()
    assert all(finish_run(engine, c, RunStatus.SUCCEEDED) for c in wide)
    counts = read_sweep(engine, sweep_id).status_counts.model_dump()
    assert counts["pruned"] == 4 and counts["succeeded"] == 4
    events = pruned_events(engine, sweep_id)
    assert sorted(r for r, _, _ in events) == sorted(c.run_id for c in narrow)  # once each
    assert {e for _, e, _ in events} == {2}
    answer = sweep_decisions(engine, sweep_id)
    by_state = {row["config_id"]: row for row in answer["configs"]}
    assert by_state[narrow[0].config_id]["state"] == "pruned" and by_state[narrow[0].config_id]["pruned_epoch"] == 2
    assert by_state[wide[0].config_id]["state"] == "done"
    assert answer["prune"]["level"] == pytest.approx(level) and answer["prune"]["pruned"] == 1
    api = TestClient(create_app(settings))  # pruned through the API: counts, filters, the catalogue
    assert api.get(f"/api/sweeps/{sweep_id}").json()["status_counts"]["pruned"] == 4
    listed = api.get(f"/api/sweeps/{sweep_id}/runs?status=pruned").json()
    assert sorted(r["id"] for r in listed) == sorted(c.run_id for c in narrow)
    assert all(r["error"].startswith("pruned at epoch 2") for r in listed)
    assert [x["id"] for x in api.get("/api/sweeps?status=pruned").json()] == [sweep_id]
    assert api.get(f"/api/sweeps/{sweep_id}/decisions").json() == answer


def test_the_decision_is_made_once_whoever_asks_at_once_and_only_by_a_lease_holder(engine: Engine) -> None:
    sweep_id, narrow, wide = two_packs(engine)
    for epoch in (1, 2):
        record(engine, narrow, epoch, NARROW)
        record(engine, wide, epoch, WIDE)
    stale = [dataclasses.replace(c, token="not-the-lease") for c in wide]
    assert after_epoch(engine, stale, 2) == set()  # a worker that lost its lease decides nothing
    assert all(r.status == RunStatus.RUNNING.value for r in runs_of(engine, sweep_id))
    answers: list[set[int]] = []
    barrier = threading.Barrier(8)

    def ask(claims: list[Claim]) -> None:
        barrier.wait()
        answers.append(after_epoch(engine, claims, 2))

    threads = [threading.Thread(target=ask, args=(narrow if i % 2 else wide,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(len, answers)) == [0, 0, 0, 0, 4, 4, 4, 4]  # narrow's askers hear their runs are pruned
    assert len(pruned_events(engine, sweep_id)) == 4  # one decision, one event per run


def test_overlapping_bounds_prune_nothing_and_a_retried_config_is_not_pruned_again(engine: Engine) -> None:
    sweep_id, narrow, wide = two_packs(engine)
    close = [0.86, 0.88, 0.85, 0.87]
    for epoch in (1, 2):
        record(engine, narrow, epoch, close)
        record(engine, wide, epoch, WIDE)
        assert after_epoch(engine, narrow, epoch) == set()
    lo, hi = one_sided(close, 0.05 / 16)[1], one_sided(WIDE, 0.05 / 16)[0]
    assert lo >= hi  # the bounds overlap: nothing to prune
    record(engine, narrow, 3, NARROW)
    record(engine, wide, 3, WIDE)
    assert after_epoch(engine, narrow, 3) == {c.run_id for c in narrow}
    retry_failed(engine, sweep_id)
    again = {r.id: r for r in runs_of(engine, sweep_id)}
    assert all(again[c.run_id].status == RunStatus.QUEUED.value and again[c.run_id].last_epoch == 3 for c in narrow)
    assert [e for _, e, _ in metric_rows(engine, narrow[0].run_id)] == [1, 2, 3]  # kept: it resumes
    resumed = claim_runs(engine, "worker-c", 10, 30.0)
    assert sorted(c.run_id for c in resumed) == sorted(c.run_id for c in narrow)
    assert all(c.last_epoch == 3 for c in resumed)
    for epoch in (4, 5, 6):
        record(engine, resumed, epoch, NARROW)
        record(engine, wide, epoch, WIDE)
        assert after_epoch(engine, resumed, epoch) == set()  # hopeless still, but the user asked for it
    assert all(finish_run(engine, c, RunStatus.SUCCEEDED) for c in resumed)
    assert [e for _, e, _ in metric_rows(engine, narrow[0].run_id)] == [1, 2, 3, 4, 5, 6]
    assert "resumed" in events_of(engine, narrow[0].run_id)


@pytest.mark.parametrize(("method", "pruned_positions"), [("median", {0}), ("asha", {0, 1})])
def test_median_and_asha_prune_by_optunas_rules_on_config_means(engine: Engine, method: str,
                                                                 pruned_positions: set[int]) -> None:
    sweep = make_sweep(engine, name=method, epochs=8, grid={"model.hidden": [[2], [8], [64]]}, replicates=2,
                       prune={"method": method, "metric": "val_accuracy", "min_epochs": 2})
    packs = [claim_runs(engine, f"worker-{i}", 10, 30.0) for i in range(3)]
    means = [0.3, 0.6, 0.9]
    for epoch in (1, 2):
        for pack, m in zip(packs, means, strict=True):
            record(engine, pack, epoch, [m - 0.01, m + 0.01])
    decided: set[int] = set()
    for pack in packs:
        decided |= after_epoch(engine, pack, 2)
    expected = {c.run_id for i in pruned_positions for c in packs[i]}
    assert decided == expected
    assert {r.id for r in runs_of(engine, sweep.id) if r.status == RunStatus.PRUNED.value} == expected
    reason = next(r.error for r in runs_of(engine, sweep.id) if r.status == RunStatus.PRUNED.value)
    assert reason is not None and ("MedianPruner" if method == "median" else "SuccessiveHalvingPruner") in reason


# ---- real Keras: pruned replicates leave a pack, the others train on as if alone ---------------

@pytest.fixture
def keras_settings(database_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(database_url, data_dir, tmp_path / "artifacts", trainer="keras", pack_size=8)


def keras_spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "dataset": "mnist", "epochs": 5, "batch_size": 32, "model": {"hidden": [16]},
            "optimizer": {"name": "adam"}, "grid": {"optimizer.learning_rate": [0.01, 0.00001]}, "replicates": 4,
            **extra}


def curves(engine: Engine, sweep_id: int, lr: float) -> dict[int, list[tuple[str, int, float | None]]]:
    with read_session(engine) as s:
        rates = {i: t["optimizer"]["learning_rate"] for i, t in s.execute(select(Config.id, Config.train))}
    out = {}
    for r in runs_of(engine, sweep_id):
        if rates[r.config_id] == lr:
            out[r.seed] = [row for row in metric_rows(engine, r.id) if row[0] != "epoch_seconds"]
    return out


def test_pruning_drops_replicates_and_the_others_train_as_if_alone_then_retry_resumes(
        keras_settings: Settings, engine: Engine) -> None:
    reference = make_sweep(engine, **keras_spec("reference"))
    pruned = make_sweep(engine, **keras_spec("pruned", prune=PRUNE))
    Worker(keras_settings, engine).run(once=True)
    runs = runs_of(engine, pruned.id)
    hopeless = [r for r in runs if r.status == RunStatus.PRUNED.value]
    assert len(hopeless) == 4 and all(2 <= r.last_epoch < 5 for r in hopeless)
    assert {r.config_id for r in hopeless} == {runs[-1].config_id}  # the learning rate 1e-5 config
    assert all(r.status == RunStatus.SUCCEEDED.value and r.last_epoch == 5 for r in runs if r not in hopeless)
    assert all(r.status == RunStatus.SUCCEEDED.value for r in runs_of(engine, reference.id))
    # the kept replicates' every metric at every epoch equals the unpruned sweep's (same configs, seeds)
    assert curves(engine, pruned.id, 0.01) == curves(engine, reference.id, 0.01)
    # the pruned ones equal the reference's up to where they stopped, and the rule held there, by hand
    kept, full = curves(engine, pruned.id, 0.00001), curves(engine, reference.id, 0.00001)
    stop = hopeless[0].last_epoch
    assert all(kept[seed] == [row for row in full[seed] if row[1] <= stop] for seed in kept)
    epoch = int(hopeless[0].error.split("pruned at epoch ")[1].split(":")[0])  # type: ignore[union-attr]

    def at(c: dict[int, list[tuple[str, int, float | None]]], e: int) -> list[float]:
        return [float(v) for rows in c.values() for k, ep, v in rows
                if k == "val_accuracy" and ep == e and v is not None]

    level = 0.05 / (2 * 2 * 3)
    good = curves(engine, reference.id, 0.01)
    for e in range(2, epoch + 1):  # pruned at the first epoch where the bounds part
        parted = one_sided(at(full, e), level)[1] < one_sided(at(good, e), level)[0]
        assert parted == (e == epoch), e
    # retry resumes them from their checkpoints; they train to the end and are not pruned again
    retry_failed(engine, pruned.id)
    Worker(keras_settings, engine).run(once=True)
    for r in hopeless:
        again = next(x for x in runs_of(engine, pruned.id) if x.id == r.id)
        assert again.status == RunStatus.SUCCEEDED.value and again.last_epoch == 5
        epochs = [e for k, e, _ in metric_rows(engine, r.id) if k == "val_accuracy"]
        assert epochs == list(range(0, 6))
        assert "resumed" in events_of(engine, r.id)
    resumed = curves(engine, pruned.id, 0.00001)
    for seed, rows in full.items():  # resumed as an uninterrupted run (a pack of 4 sums its losses in another order)
        assert [(k, e) for k, e, _ in resumed[seed]] == [(k, e) for k, e, _ in rows]
        assert [v for _, _, v in resumed[seed]] == pytest.approx([v for _, _, v in rows], rel=1e-6)
    assert np.isfinite([v for rows in full.values() for _, _, v in rows if v is not None]).all()


# ---- two workers: a fast hopeless pack waits for the other config to reach its epoch --------------

class WidthCurves(FakeTrainer):
    """The fake trainer with val_accuracy by the config's width (width 2 hopeless: NARROW, WIDE); width 64
    starts slowly (its first two epochs take 1.5 s, as a first compile does), width 2 is quick."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData | None, states: list[State | None]):
        super().__init__(spec, seeds, data, states)
        self.wide = spec.model.hidden != [2]
        self.values = WIDE if self.wide else NARROW

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        self.sleep = 1.5 if self.wide and epoch <= 2 else 0.02
        return super().train_epoch(epoch, should_stop)

    def _metrics(self, i: int) -> EpochMetrics:
        return {**super()._metrics(i), "val_accuracy": self.values[self.seeds[i] % 4] + 0.001 * self.done[i]}


def test_a_fast_hopeless_pack_waits_for_the_other_configs_epoch_and_stops_there(settings: Settings,
                                                                                engine: Engine) -> None:
    sweep = make_sweep(engine, name="two workers", epochs=10, grid={"model.hidden": [[2], [64]]}, replicates=4,
                       prune=PRUNE)
    threads = [threading.Thread(target=Worker(settings, engine, factory=WidthCurves).run, kwargs={"max_packs": 1})
               for _ in range(2)]
    threads[0].start()  # claims width 2 (the oldest runs): 0.02 s an epoch, its 10 epochs done in well under 1 s
    deadline = time.monotonic() + 30
    while not any(r.status == RunStatus.RUNNING.value for r in runs_of(engine, sweep.id)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    threads[1].start()  # width 64: reaches epoch 2 after 3 s; width 2 waits for it there, at most a lease
    for t in threads:
        t.join(60)
    runs = runs_of(engine, sweep.id)
    narrow = [r for r in runs if r.status == RunStatus.PRUNED.value]
    assert len(narrow) == 4 and {r.last_epoch for r in narrow} == {2}
    assert all(r.status == RunStatus.SUCCEEDED.value and r.last_epoch == 10 for r in runs if r not in narrow)
    assert {e for _, e, _ in pruned_events(engine, sweep.id)} == {2}
