"""Process lifecycle: graceful shutdown of a worker and of `sweeplab up`, and a concurrent start of
a server and several workers against an empty database (it migrates once, without errors).
Runs on SQLite by default and on PostgreSQL when SWEEPLAB_TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from app.config import PROJECT_ROOT, Settings
from app.db import get_engine
from app.migrate import head_revision
from app.models import Run, RunEvent, RunStatus
from tests.conftest import free_port, healthy, settings_env, start_worker, sweeplab_command, wait_for
from tests.e2e import test_crash
from tests.e2e.test_crash import all_final, check_exactly_once, runs_held, submit

# The crash tests' fixtures: short leases, one run per claim, worker fleets.
crash_settings = test_crash.crash_settings
crash_engine = test_crash.crash_engine
fleet_factory = test_crash.fleet_factory


def _statuses(engine: Engine, sweep_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Run.status).where(Run.sweep_id == sweep_id).order_by(Run.id)))


@pytest.mark.timeout(120)
def test_sigterm_releases_the_workers_runs_within_seconds(crash_settings: Settings, crash_engine: Engine,
                                                           fleet_factory: Any, tmp_path: Path) -> None:
    sweep_id = submit(crash_engine, crash_settings, name="sigterm", epochs=30, replicates=4)
    fleet = fleet_factory(1, "--pack-size", "4", SWEEPLAB_FAKE_EPOCH_SECONDS="0.3")
    proc = fleet.procs[0]
    wait_for(lambda: len(runs_held(crash_engine, proc)) == 4 and
             all(e >= 1 for _, e in runs_held(crash_engine, proc)), 60, 0.05, "a pack past epoch 1")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    wait_for(lambda: _statuses(crash_engine, sweep_id) == ["queued"] * 4, 5, 0.05, "the runs back in the queue")
    released_after = time.monotonic() - t0
    assert released_after < 5, released_after
    print(f"\nSIGTERM: 4 packed runs back in the queue {released_after:.2f} s after the signal")
    with crash_engine.connect() as conn:
        released = list(conn.scalars(select(RunEvent.run_id).where(RunEvent.kind == "released")))
        attempts = list(conn.scalars(select(Run.attempt).where(Run.sweep_id == sweep_id)))
    assert len(released) == 4
    assert attempts == [0] * 4, "a graceful release does not count as an attempt"
    # Another worker picks them up from their checkpoints and finishes them.
    fleet.restart(0)
    wait_for(lambda: all_final(crash_engine, [sweep_id]), 60, 0.2, "the runs to finish")
    figures = check_exactly_once(crash_engine, [sweep_id])
    assert figures["resumed_runs"] == 4 and figures["attempts"] == 4


def _children(pid: int) -> list[int]:
    """Direct children of PID, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGTERM to sweeplab up", "SIGINT to its process group (Ctrl-C)"])
def test_sweeplab_up_stops_all_its_children(how: str, crash_settings: Settings, crash_engine: Engine,
                                            tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "up.log", "ab")
    env = settings_env(crash_settings, SWEEPLAB_FAKE_EPOCH_SECONDS="0.3")
    up = subprocess.Popen(sweeplab_command("up", "--workers", "2", "--port", str(port), "--pack-size", "1"),
                          cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        sweep_id = submit(crash_engine, crash_settings, name="up", epochs=40, replicates=4)
        wait_for(lambda: _statuses(crash_engine, sweep_id).count("running") == 2, 60, 0.1, "two runs training")
        wait_for(lambda: healthy(port), 60, 0.2, "the dashboard")
        children = _children(up.pid)
        assert len(children) == 3, children  # the server and two workers
        if how.startswith("SIGTERM"):
            up.send_signal(signal.SIGTERM)
        else:
            os.killpg(up.pid, signal.SIGINT)
        assert up.wait(20) == 0
        wait_for(lambda: not any(_alive(c) for c in children), 5, 0.1, "every child to exit")
        assert _statuses(crash_engine, sweep_id).count("running") == 0, "a run was left running"
        assert "Traceback" not in (tmp_path / "up.log").read_text(errors="replace")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


@pytest.mark.timeout(120)
def test_concurrent_start_on_an_empty_database_migrates_once(crash_settings: Settings, tmp_path: Path) -> None:
    """A server, four workers and two `sweeplab migrate` started together on an empty database."""
    env = settings_env(crash_settings)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        path = tmp_path / f"start-{len(procs)}.log"
        logs.append(path)
        handle = open(path, "ab")
        proc = subprocess.Popen(sweeplab_command(*args), cwd=PROJECT_ROOT, env=env, stdout=handle, stderr=handle)
        procs.append(proc)
        return proc

    try:
        spawn("serve", "--port", str(port))
        for _ in range(4):
            procs.append(start_worker(crash_settings, tmp_path / f"start-{len(procs)}.log"))
            logs.append(tmp_path / f"start-{len(procs) - 1}.log")
        migrators = [spawn("migrate"), spawn("migrate")]
        assert [m.wait(60) for m in migrators] == [0, 0]

        wait_for(lambda: healthy(port), 60, 0.2, "the server")
        wait_for(lambda: sum("started (pack size" in p.read_text(errors="replace") for p in logs) >= 4, 60, 0.2,
                 "four workers to start")
        assert all(p.poll() is None for p in procs if p not in migrators), "a process died at start"
        text_of_logs = "\n".join(p.read_text(errors="replace") for p in logs)
        for bad in ("Traceback", "ERROR", "already exists", "database is locked", "UniqueViolation"):
            assert bad not in text_of_logs, f"{bad!r} in the start logs:\n{text_of_logs[-3000:]}"
        engine = get_engine(crash_settings.database_url)
        with engine.connect() as conn:
            versions = list(conn.scalars(text("SELECT version_num FROM alembic_version")))
            assert versions == [head_revision(crash_settings.database_url)]
            queued = conn.scalar(select(Run.id).where(Run.status == RunStatus.QUEUED.value))
        assert queued is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
