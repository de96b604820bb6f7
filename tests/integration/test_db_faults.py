"""A worker (in-process, fake trainer) under real database faults: a connection cut or SQLite
busy at one statement, a commit whose answer is lost, connections cut while a pack trains, the
database away for longer than the retry budget, and a pack that runs out of memory.

Database errors are never errors of the training: no run may end failed because of one, no epoch
may be stored twice or skipped. On SQLite by default, on PostgreSQL with SWEEPLAB_TEST_DATABASE_URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from app.config import Settings
from app.db import engine_for
from app.migrate import migrate
from app.services.queue import claim_runs, record_epoch, release_run
from tests.conftest import make_settings, wait_for
from tests.factories import events_of, make_sweep, metric_rows, runs_of
from tests.faults import Interference, LostCommit, StatementFault, database_away
from worker.checkpoint import dump_state
from worker.fake_trainer import FakeTrainer
from worker.main import Worker
from worker.trainer import EpochMetrics

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
Matcher = Callable[[str, Any], bool]


@pytest.fixture
def fault_settings(database_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    """Short leases, a short SQLite busy timeout (so a held lock is felt at once), packs of 4."""
    return make_settings(database_url, data_dir, tmp_path / "artifacts", lease_seconds=3.0, heartbeat_seconds=0.3,
                         reap_seconds=0.3, sqlite_busy_timeout_seconds=0.1, db_retry_seconds=10.0)


@pytest.fixture
def fault_engine(fault_settings: Settings) -> Engine:
    migrate(fault_settings.database_url)
    return engine_for(fault_settings)


def check_runs(engine: Engine, sweep_id: int, attempt: int | None = 1) -> None:
    """Every run succeeded once, at ATTEMPT (if given), each metric at epochs 0..N once."""
    for run in runs_of(engine, sweep_id):
        assert run.status == "succeeded", f"run {run.id}: {run.status} ({run.error})"
        if attempt is not None:
            assert run.attempt == attempt, f"run {run.id}: attempt {run.attempt}"
        rows = metric_rows(engine, run.id)
        for key in KEYS:
            assert [e for k, e, _ in rows if k == key] == list(range(run.epochs + 1)), (run.id, key)
        assert events_of(engine, run.id).count("succeeded") == 1
        assert "failed" not in events_of(engine, run.id)


def _starts(prefix: str, needle: str = "") -> Matcher:
    return lambda sql, params: sql.startswith(prefix) and needle in sql


FAULTS: dict[str, tuple[Matcher, int]] = {
    "metrics insert": (_starts("INSERT INTO metrics"), 3),
    "epoch update": (_starts("UPDATE runs SET last_epoch"), 4),
    "finish": (lambda sql, params: sql.startswith("UPDATE runs SET status") and "succeeded" in str(params), 2),
    "claim": (_starts("UPDATE runs SET status", "attempt=(runs.attempt +"), 1),
    "heartbeat": (_starts("UPDATE runs SET lease_expires_at"), 1),
    "checkpoint read": (_starts("SELECT", "FROM checkpoints"), 2),
}


def _resumable(engine: Engine, replicates: int, epochs: int) -> int:
    """A sweep whose runs recorded epochs 0-1 with checkpoints, then were released (attempt 0)."""
    sweep = make_sweep(engine, replicates=replicates, epochs=epochs)
    for claim in claim_runs(engine, "earlier", replicates, 30.0):
        for epoch in (0, 1):
            record_epoch(engine, claim, epoch, dict.fromkeys(KEYS, 0.5), dump_state({"epochs_done": np.array(epoch)}),
                         30.0)
        release_run(engine, claim)
    return sweep.id


@pytest.mark.parametrize("where", list(FAULTS))
def test_a_fault_at_one_statement_is_retried(where: str, fault_settings: Settings, fault_engine: Engine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the backend is terminated just before the statement; SQLite: "database is locked"."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.4" if where == "heartbeat" else "0.02")
    if where == "checkpoint read":
        sweep_id = _resumable(fault_engine, 3, 4)
    else:
        sweep_id = make_sweep(fault_engine, replicates=3, epochs=3).id
    matches, nth = FAULTS[where]
    fault = StatementFault(fault_engine, matches, nth)
    try:
        Worker(fault_settings, fault_engine).run(once=True)
    finally:
        fault.remove()
    assert fault.fired == 1, f"the fault never fired ({fault.seen} matching statements)"
    check_runs(fault_engine, sweep_id)


LOST_COMMITS: dict[str, tuple[Matcher, int]] = {
    "claim": FAULTS["claim"],
    "epoch": FAULTS["metrics insert"],
    "finish": FAULTS["finish"],
}


@pytest.mark.parametrize("where", list(LOST_COMMITS))
def test_a_commit_whose_answer_is_lost(where: str, fault_settings: Settings, fault_engine: Engine) -> None:
    """The connection is cut during COMMIT: the transaction committed, the worker got an error.
    The retry must see its own claim or finish (not a lost lease), and store the epoch once."""
    sweep_id = make_sweep(fault_engine, replicates=3, epochs=3).id
    matches, nth = LOST_COMMITS[where]
    fault = LostCommit(fault_engine, matches, nth)
    try:
        Worker(fault_settings, fault_engine).run(once=True)
    finally:
        fault.remove()
    assert fault.fired == 1
    check_runs(fault_engine, sweep_id)
    for run in runs_of(fault_engine, sweep_id):
        assert (Path(fault_settings.artifacts_dir) / f"run-{run.id}.keras").is_file()
        assert events_of(fault_engine, run.id)[0] == "claimed" and "requeued" not in events_of(fault_engine, run.id)


def test_connections_cut_while_a_pack_trains(fault_settings: Settings, fault_engine: Engine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: every backend of the database terminated every 0.2 s; SQLite: another connection
    holds the write lock for 0.3 s (three busy timeouts) every 0.2 s."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.05")
    sweep_id = make_sweep(fault_engine, replicates=4, epochs=6, grid={"model.hidden": [[4], [8]]}).id
    interference = Interference(fault_settings.database_url, period=0.2, hold=0.3)
    interference.start()
    try:
        Worker(fault_settings, fault_engine).run(once=True)
    finally:
        interference.stop()
    assert interference.faults >= 3  # faults really happened while it trained (timing varies with load)
    check_runs(fault_engine, sweep_id)


@pytest.mark.parametrize("outage", [2.0, 4.5], ids=["within the lease", "past the lease"])
def test_database_away_longer_than_the_retry_budget(outage: float, fault_settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs are never failed: the worker stops them and gives them back to the queue as soon as
    the database answers again within the lease (the attempt is given back too), or else their
    leases expire and they are requeued; then they resume from their checkpoints and finish."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.1")
    settings = fault_settings.model_copy(update={"db_retry_seconds": 0.5})  # lease 3 s
    engine = engine_for(settings)
    migrate(settings.database_url)
    sweep_id = make_sweep(engine, replicates=3, epochs=20).id
    worker = Worker(settings, engine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: all(r.last_epoch >= 2 for r in runs_of(engine, sweep_id)), 30, 0.05, "epoch 2")
        with database_away(settings.database_url):
            threading.Event().wait(outage)
        wait_for(lambda: all(r.status not in ("queued", "running") for r in runs_of(engine, sweep_id)), 60, 0.2,
                 "the runs to end")
    finally:
        worker.shutdown.set()
        thread.join(30)
    expected_attempt, given_back = (1, "released") if outage < settings.lease_seconds else (2, "requeued")
    check_runs(engine, sweep_id, attempt=expected_attempt)
    for run in runs_of(engine, sweep_id):
        assert given_back in events_of(engine, run.id), events_of(engine, run.id)


class PackOutOfMemory(FakeTrainer):
    """Runs out of memory whenever it trains more than ALONE replicates at once."""

    alone = 1

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        if len(self.done) > self.alone:
            raise MemoryError(f"cannot allocate {len(self.done)} replicates")
        return super().train_epoch(epoch, should_stop)


class AlwaysOutOfMemory(PackOutOfMemory):
    alone = 0


def test_out_of_memory_splits_the_pack(fault_settings: Settings, fault_engine: Engine) -> None:
    """Each run goes back to the queue with its attempt counted, then trains alone and succeeds."""
    sweep_id = make_sweep(fault_engine, replicates=3, epochs=3).id
    Worker(fault_settings, fault_engine, factory=PackOutOfMemory).run(once=True)
    check_runs(fault_engine, sweep_id, attempt=2)
    for run in runs_of(fault_engine, sweep_id):
        assert events_of(fault_engine, run.id) == ["claimed", "requeued", "resumed", "succeeded"]


def test_out_of_memory_alone_fails_after_max_attempts(fault_settings: Settings, fault_engine: Engine) -> None:
    sweep = make_sweep(fault_engine, max_attempts=2, replicates=2, epochs=3)
    Worker(fault_settings, fault_engine, factory=AlwaysOutOfMemory).run(once=True)
    for run in runs_of(fault_engine, sweep.id):
        assert run.status == "failed" and run.attempt == 2
        assert "out of memory" in (run.error or "")
        assert events_of(fault_engine, run.id) == ["claimed", "requeued", "resumed", "failed"]
