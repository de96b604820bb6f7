"""Crash tests with real processes: SIGKILLed workers, a paused worker, a poison run, a killed
server. They run on SQLite by default and on PostgreSQL when SWEEPLAB_TEST_DATABASE_URL is set.

Each test checks the queue's promise (RELIABILITY.md): every run ends exactly once, every epoch's
metrics are stored exactly once and contiguously, and a resumed run continues from its checkpoint.
The fake trainer's metrics are a pure function of (seed, epochs trained), and it raises when asked
to train an epoch out of order, so a resume from anything but the checkpoint shows up as a failed
run or a wrong value.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import get_engine
from app.migrate import migrate
from app.models import Metric, Run, RunEvent, RunStatus
from app.retry import retry_transient
from app.services.sweeps import create_sweep
from app.spec import SweepSpec
from tests.conftest import PG_URL, LiveServer, make_settings, start_worker, wait_for
from tests.faults import Interference

FAKE_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
FINAL = (RunStatus.SUCCEEDED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value)
ON_POSTGRES = bool(PG_URL)
T = TypeVar("T")


@pytest.fixture
def crash_settings(database_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    """Short leases (3 s, heartbeat 0.5 s), fast reaping, one run per claim."""
    return make_settings(database_url, data_dir, tmp_path / "artifacts", lease_seconds=3.0,
                         heartbeat_seconds=0.5, reap_seconds=0.5, poll_seconds=0.1, pack_size=1)


@pytest.fixture
def crash_engine(crash_settings: Settings) -> Engine:
    migrate(crash_settings.database_url)
    return get_engine(crash_settings.database_url)


def submit(engine: Engine, settings: Settings, **spec: Any) -> int:
    """Queue a sweep straight through the service (no server needed); returns its id."""
    sweep = create_sweep(engine, SweepSpec.model_validate(spec), settings.max_runs_per_sweep,
                         settings.max_attempts)
    return sweep.id


class Fleet:
    """Worker processes the test kills, pauses and restarts; each has a slot and a log."""

    def __init__(self, settings: Settings, logs: Path, size: int, *args: str, **env: str):
        self.settings, self.logs, self.args, self.env = settings, logs, args, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0
        for _ in range(size):
            self.procs.append(self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started += 1
        return start_worker(self.settings, self.logs / f"worker-{self.started}.log", *self.args, **self.env)

    def restart(self, slot: int) -> None:
        self.procs[slot] = self._spawn()

    def restart_dead(self) -> list[int]:
        """Start a new worker in every slot whose process has exited; returns their exit codes."""
        codes = []
        for slot, proc in enumerate(self.procs):
            if proc.poll() is not None:
                codes.append(proc.returncode)
                self.restart(slot)
        return codes

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))


@pytest.fixture
def fleet_factory(crash_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(size: int, *args: str, settings: Settings | None = None, **env: str) -> Fleet:
        fleet = Fleet(settings or crash_settings, tmp_path, size, *args, **env)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def worker_pattern(proc: subprocess.Popen[bytes]) -> str:
    """A LIKE pattern matching the worker ids of this process (host:pid:random)."""
    return f"%:{proc.pid}:%"


def runs_held(engine: Engine, proc: subprocess.Popen[bytes]) -> list[tuple[int, int]]:
    """(run id, last epoch) of the runs this worker process holds now."""
    with engine.connect() as conn:
        rows = conn.execute(select(Run.id, Run.last_epoch).where(
            Run.status == RunStatus.RUNNING.value, Run.worker_id.like(worker_pattern(proc)))).all()
    return [(r.id, r.last_epoch) for r in rows]


def status_counts(engine: Engine, sweep_ids: list[int]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Run.status, func.count()).where(Run.sweep_id.in_(sweep_ids))
                            .group_by(Run.status)).all()
    return {status: n for status, n in rows}


def all_final(engine: Engine, sweep_ids: list[int]) -> bool:
    counts = status_counts(engine, sweep_ids)
    return counts.get("queued", 0) + counts.get("running", 0) == 0


def fake_accuracy(seed: int, epoch: int) -> float:
    """What the fake trainer reports after `epoch` epochs (see worker/fake_trainer.py)."""
    return 1.0 - 0.9 / (1.0 + epoch + seed % 7 * 0.01)


def check_exactly_once(engine: Engine, sweep_ids: list[int], fake: bool = True,
                       expect_failed: frozenset[int] = frozenset()) -> dict[str, int]:
    """Every run ended once (succeeded, but for `expect_failed`); metrics unique and contiguous.

    Returns figures: runs, attempts, resumed (claims that resumed from a checkpoint)."""
    with engine.connect() as conn:
        runs = conn.execute(select(Run.id, Run.seed, Run.status, Run.epochs, Run.last_epoch, Run.attempt,
                                   Run.error).where(Run.sweep_id.in_(sweep_ids)).order_by(Run.id)).all()
        ids = [r.id for r in runs]
        dupes = conn.execute(
            select(Metric.run_id, Metric.key, Metric.epoch, func.count())
            .where(Metric.run_id.in_(ids)).group_by(Metric.run_id, Metric.key, Metric.epoch)
            .having(func.count() > 1)
        ).all()
        metrics = conn.execute(select(Metric.run_id, Metric.key, Metric.epoch, Metric.value)
                               .where(Metric.run_id.in_(ids)).order_by(Metric.run_id, Metric.key, Metric.epoch)
                               ).all()
        events = conn.execute(select(RunEvent.run_id, RunEvent.kind, RunEvent.epoch)
                              .where(RunEvent.run_id.in_(ids)).order_by(RunEvent.id)).all()
    assert dupes == [], f"duplicate metric rows: {dupes[:5]}"
    series: dict[tuple[int, str], list[tuple[int, float | None]]] = {}
    for m in metrics:
        series.setdefault((m.run_id, m.key), []).append((m.epoch, m.value))
    endings: dict[int, int] = {}
    for e in events:
        if e.kind in FINAL:
            endings[e.run_id] = endings.get(e.run_id, 0) + 1
    for r in runs:
        if r.id in expect_failed:
            assert r.status == RunStatus.FAILED.value, f"run {r.id} should have failed: {r.status}"
            continue
        assert r.status == RunStatus.SUCCEEDED.value, f"run {r.id}: {r.status} ({r.error})"
        assert endings.get(r.id) == 1, f"run {r.id} ended {endings.get(r.id, 0)} times"
        assert r.last_epoch == r.epochs, f"run {r.id}: last epoch {r.last_epoch} of {r.epochs}"
        keys = FAKE_KEYS if fake else ("loss", "accuracy", "val_loss", "val_accuracy")
        for key in keys:
            epochs = [epoch for epoch, _ in series.get((r.id, key), [])]
            assert epochs == list(range(r.epochs + 1)), f"run {r.id} {key}: epochs {epochs}"
        if fake:
            for epoch, value in series[(r.id, "accuracy")]:
                assert value is not None and math.isclose(value, fake_accuracy(r.seed, epoch), rel_tol=1e-9), (
                    f"run {r.id} epoch {epoch}: accuracy {value}, not what training from its checkpoint gives")
    resumed = [e for e in events if e.kind == "resumed"]
    for e in resumed:  # a resume starts right after the last recorded epoch
        assert e.epoch is not None and e.epoch >= 0
    return {"runs": len(runs), "attempts": sum(r.attempt for r in runs), "resumed": len(resumed),
            "resumed_runs": len({e.run_id for e in resumed})}


# --------------------------------------------------------------------------------------------
# 4 workers (8 on PostgreSQL), 120 runs, a killer SIGKILLs a random busy worker every few seconds


@pytest.mark.timeout(240)
def test_killer_sigkills_random_workers(crash_settings: Settings, crash_engine: Engine, fleet_factory: Any,
                                        tmp_path: Path) -> None:
    n_workers = 8 if ON_POSTGRES else 4
    sweep_id = submit(crash_engine, crash_settings, name="kill -9", epochs=5,
                      grid={"model.hidden": [[8], [16], [24], [32], [40], [48]]}, replicates=20)
    fleet = fleet_factory(n_workers, SWEEPLAB_FAKE_EPOCH_SECONDS="0.08")
    rng = random.Random(6)
    kills, held_at_kills = 0, 0
    deadline = time.monotonic() + 200
    next_kill = time.monotonic() + rng.uniform(1.5, 3.0)
    while not all_final(crash_engine, [sweep_id]):
        assert time.monotonic() < deadline, f"runs not final: {status_counts(crash_engine, [sweep_id])}"
        assert not fleet.restart_dead(), "a worker died without being killed"
        if time.monotonic() >= next_kill:
            # A random worker among those in the middle of a run (past epoch 0), so kills land mid-run.
            busy = [slot for slot, p in enumerate(fleet.procs) if any(e >= 0 for _, e in runs_held(crash_engine, p))]
            slot = rng.choice(busy or range(n_workers))
            proc = fleet.procs[slot]
            proc.kill()
            proc.wait()
            held_at_kills += len(runs_held(crash_engine, proc))
            kills += 1
            fleet.restart(slot)
            next_kill = time.monotonic() + rng.uniform(1.5, 3.0)
        time.sleep(0.1)
    figures = check_exactly_once(crash_engine, [sweep_id])
    assert figures["runs"] == 120
    assert kills >= 5, f"only {kills} kills: the test did not exercise crashes"
    assert figures["resumed"] >= 1, "no run resumed from a checkpoint"
    # Each kill costs at most the claims the killed worker held (one: pack size 1).
    assert figures["attempts"] - figures["runs"] <= held_at_kills <= kills
    print(f"\nkill -9 on {crash_engine.dialect.name}: {figures['runs']} runs, {n_workers} workers, {kills} kills, "
          f"{figures['resumed_runs']} runs resumed, extra attempts {figures['attempts'] - figures['runs']}, "
          f"lost runs 0, duplicate epochs 0")


# --------------------------------------------------------------------------------------------
# Database faults while 3 workers train: PostgreSQL backends terminated every 0.5 s, or SQLite's
# write lock held by another connection for longer than the workers' busy timeout, over and over


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_database_faults_while_workers_train(crash_settings: Settings, fleet_factory: Any) -> None:
    settings = crash_settings.model_copy(update={"sqlite_busy_timeout_seconds": 0.2, "db_retry_seconds": 10.0})
    engine = get_engine(settings.database_url)
    migrate(settings.database_url)
    # Short epochs: the workers are in a transaction much of the time, so cuts land inside them
    # (a cut of an idle pooled connection is caught by pool_pre_ping and proves nothing).
    sweep_id = submit(engine, settings, name="db faults", epochs=30, replicates=6,
                      grid={"model.hidden": [[8], [16], [24], [32], [40]]})
    fleet = fleet_factory(3, "--pack-size", "3", settings=settings, SWEEPLAB_FAKE_EPOCH_SECONDS="0.03")

    def poll(check: Callable[[], T]) -> T:  # the test's own connections are cut too
        return retry_transient(check, 10, "test poll")

    wait_for(lambda: poll(lambda: status_counts(engine, [sweep_id]).get("running", 0) > 0), 30, 0.1, "training")
    interference = Interference(settings.database_url, period=0.5, hold=0.5)
    interference.start()
    deadline = time.monotonic() + 60
    try:
        while not poll(lambda: all_final(engine, [sweep_id])):
            assert time.monotonic() < deadline, poll(lambda: status_counts(engine, [sweep_id]))
            assert not fleet.restart_dead(), "a worker died under database faults"
            time.sleep(0.2)
    finally:
        interference.stop()
    figures = check_exactly_once(engine, [sweep_id])
    assert interference.faults >= 5, f"only {interference.faults} faults: the test did not exercise them"
    logs = fleet.log_text()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:4000]
    print(f"\ndatabase faults on {engine.dialect.name}: {figures['runs']} runs, {interference.faults} faults "
          f"({interference.terminated} backends terminated), {logs.count('transient database error')} retries, "
          f"extra attempts {figures['attempts'] - figures['runs']}, failed 0, duplicate epochs 0")


# --------------------------------------------------------------------------------------------
# A worker paused (SIGSTOP) past its lease, then resumed (SIGCONT)


def _writer_busy(engine: Engine) -> bool:
    """Is a transaction of another process open (one we must not freeze mid-way)?"""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state NOT IN ('idle')")).scalar())
    con = sqlite3.connect(make_url(str(engine.url)).database or "", timeout=0.2, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        con.close()


def pause_between_transactions(proc: subprocess.Popen[bytes], engine: Engine) -> None:
    """SIGSTOP the process at a moment it holds no database lock (a frozen lock holder would
    stall every other writer: that is a different failure from the one under test)."""
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        if not _writer_busy(engine):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("could not pause the worker between transactions")


@pytest.mark.timeout(120)
def test_paused_worker_loses_its_lease_and_drops_the_run(crash_settings: Settings, crash_engine: Engine,
                                                          fleet_factory: Any) -> None:
    sweep_id = submit(crash_engine, crash_settings, name="pause", epochs=40, replicates=1)
    first = fleet_factory(1, SWEEPLAB_FAKE_EPOCH_SECONDS="0.15")
    paused = first.procs[0]
    wait_for(lambda: any(e >= 3 for _, e in runs_held(crash_engine, paused)), 60, 0.05, "epoch 3 on worker A")
    pause_between_transactions(paused, crash_engine)
    (run_id, paused_at), = runs_held(crash_engine, paused)
    second = fleet_factory(1, SWEEPLAB_FAKE_EPOCH_SECONDS="0.15")
    other = second.procs[0]
    # Past the lease: B's reaper requeues the run, B resumes it and records at least one epoch.
    wait_for(lambda: any(e > paused_at + 1 for _, e in runs_held(crash_engine, other)), 60, 0.05,
             "worker B to take the run over")
    paused.send_signal(signal.SIGCONT)
    wait_for(lambda: all_final(crash_engine, [sweep_id]), 60, 0.1, "the run to end")
    figures = check_exactly_once(crash_engine, [sweep_id])
    with crash_engine.connect() as conn:
        run = conn.execute(select(Run.attempt, Run.worker_id).where(Run.id == run_id)).one()
        kinds = list(conn.scalars(select(RunEvent.kind).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
    assert run.attempt == 2 and figures["resumed"] == 1
    assert kinds == ["claimed", "requeued", "resumed", "succeeded"], kinds
    wait_for(lambda: "lease lost" in first.log_text(), 10, 0.1, "worker A to notice it lost the lease")
    assert paused.poll() is None, "the paused worker should drop the run and go on, not crash"
    assert "Traceback" not in first.log_text() + second.log_text()


# --------------------------------------------------------------------------------------------
# A poison run that kills its worker process every time


POISON_SEED = 4242


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pack_size", [1, 4])
def test_poison_run_fails_after_max_attempts_and_harms_no_other(pack_size: int, crash_settings: Settings,
                                                                   crash_engine: Engine, fleet_factory: Any) -> None:
    """The poison seed shares its config with ten healthy ones, so packed workers train them together."""
    sweep = submit(crash_engine, crash_settings, name="poison", epochs=3, seeds=[POISON_SEED, *range(10)])
    fleet = fleet_factory(2, "--pack-size", str(pack_size), SWEEPLAB_FAKE_EPOCH_SECONDS="0.1",
                          SWEEPLAB_FAKE_POISON_SEED=str(POISON_SEED))
    deaths: list[int] = []
    deadline = time.monotonic() + 90
    while not all_final(crash_engine, [sweep]):
        assert time.monotonic() < deadline, status_counts(crash_engine, [sweep])
        deaths += fleet.restart_dead()
        time.sleep(0.1)
    with crash_engine.connect() as conn:
        bad = conn.execute(select(Run.id, Run.attempt, Run.max_attempts, Run.error)
                           .where(Run.sweep_id == sweep, Run.seed == POISON_SEED)).one()
        others = list(conn.scalars(select(Run.attempt).where(Run.sweep_id == sweep, Run.seed != POISON_SEED)))
    assert bad.attempt == bad.max_attempts == crash_settings.max_attempts
    assert bad.error and "lease expired" in bad.error
    assert deaths == [17] * crash_settings.max_attempts, deaths
    check_exactly_once(crash_engine, [sweep], expect_failed=frozenset({bad.id}))
    # Only the poison's first pack-mates share one crash with it: after that it trains alone.
    assert sum(others) - len(others) <= pack_size - 1, f"healthy runs' attempts: {others}"


# --------------------------------------------------------------------------------------------
# The server killed and restarted while workers train


def _first_epochs_event(url: str, timeout: float, last_event_id: str | None = None) -> tuple[int, list[Any]]:
    """The id and points of the first `epochs` event URL sends (an SSE stream), within TIMEOUT."""
    fields: dict[str, str] = {}
    headers = {"last-event-id": last_event_id} if last_event_id else {}
    with httpx.stream("GET", url, timeout=timeout, headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "":
                if fields.get("event") == "epochs":
                    return int(fields["id"]), json.loads(fields["data"])["points"]
                fields = {}
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    raise AssertionError(f"no epochs event from {url}")


@pytest.mark.timeout(180)
def test_server_killed_and_restarted_while_workers_train(crash_settings: Settings, crash_engine: Engine,
                                                          fleet_factory: Any, tmp_path: Path) -> None:
    server = LiveServer(crash_settings, tmp_path / "server.log").start()
    try:
        spec = {"name": "restart", "epochs": 6, "replicates": 10, "grid": {"model.hidden": [[8], [16], [32]]}}
        created = httpx.post(f"{server.url}/api/sweeps", json=spec, timeout=10)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        fleet_factory(3, SWEEPLAB_FAKE_EPOCH_SECONDS="0.1")
        cursor, _ = _first_epochs_event(f"{server.url}/api/sweeps/{sweep_id}/stream", 60)
        server.stop(signal.SIGKILL)

        def stored() -> int:
            with crash_engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(Metric)) or 0)

        before = stored()
        wait_for(lambda: stored() > before + 20, 30, 0.1, "workers to go on storing epochs without the server")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/api/health", timeout=1)
        server.start()  # same port: an open page's EventSource reconnects to the same address
        # ... with the same URL and the id of the last event it saw in Last-Event-ID.
        resumed_at, points = _first_epochs_event(f"{server.url}/api/sweeps/{sweep_id}/stream", 30,
                                                 last_event_id=str(cursor))
        assert resumed_at > cursor and points, "the stream did not go on from the last event seen"
        assert all(p["run_id"] for p in points)

        def done() -> bool:
            counts = httpx.get(f"{server.url}/api/sweeps/{sweep_id}", timeout=5).json()["status_counts"]
            return counts["queued"] + counts["running"] == 0

        wait_for(done, 90, 0.5, "the sweep to end")
        check_exactly_once(crash_engine, [sweep_id])
        runs = httpx.get(f"{server.url}/api/sweeps/{sweep_id}/runs", timeout=5).json()
        assert [r["status"] for r in runs] == ["succeeded"] * 30
        for run in runs[:5]:
            series = httpx.get(f"{server.url}/api/runs/{run['id']}/metrics", timeout=5).json()["series"]
            assert series["val_accuracy"]["epochs"] == list(range(7))
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Real Keras: a worker SIGKILLed mid-run, the run resumes on another worker from its checkpoint


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_keras_run_resumes_elsewhere_after_sigkill(database_url: str, data_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(database_url, data_dir, tmp_path / "artifacts", trainer="keras", pack_size=1,
                             lease_seconds=4.0, heartbeat_seconds=0.5, reap_seconds=0.5, tf_threads=1)
    migrate(database_url)
    engine = get_engine(database_url)
    spec = {"name": "keras kill", "epochs": 10, "batch_size": 8, "model": {"hidden": [32]}, "seeds": [7],
            "optimizer": {"name": "adam", "learning_rate": 0.002}}
    killed = submit(engine, settings, **spec)
    fleet = Fleet(settings, tmp_path, 1)
    try:
        victim = fleet.procs[0]
        wait_for(lambda: any(e >= 2 for _, e in runs_held(engine, victim)), 120, 0.02, "epoch 2 of the Keras run")
        victim.kill()
        victim.wait()
        (at_kill,) = [e for (e,) in _last_epochs(engine, killed)]
        assert at_kill < spec["epochs"], "the run ended before the kill"
        reference = submit(engine, settings, **{**spec, "name": "uninterrupted"})
        fleet.restart(0)
        wait_for(lambda: all_final(engine, [killed, reference]), 240, 0.5, "the Keras runs to end")
    finally:
        fleet.stop()
    figures = check_exactly_once(engine, [killed, reference], fake=False)
    assert figures["resumed"] == 1 and figures["attempts"] == 3
    with engine.connect() as conn:
        loss = {}
        for sweep in (killed, reference):
            loss[sweep] = list(conn.scalars(
                select(Metric.value).join(Run, Run.id == Metric.run_id)
                .where(Run.sweep_id == sweep, Metric.key == "val_loss").order_by(Metric.epoch)))
        model = conn.execute(text("SELECT length(a.data) FROM artifacts a JOIN runs r ON r.id = a.run_id "
                                  "WHERE r.sweep_id = :s AND a.name = 'model.keras'"), {"s": killed}).scalar()
    assert model and model > 1000
    # The resumed run continues as the uninterrupted one does: same shuffles, weights and optimizer state.
    assert loss[killed] == pytest.approx(loss[reference], rel=1e-3, abs=1e-4)


def _last_epochs(engine: Engine, sweep_id: int) -> list[tuple[int]]:
    with engine.connect() as conn:
        return [(e,) for e in conn.scalars(select(Run.last_epoch).where(Run.sweep_id == sweep_id))]

