"""The workers table (app.services.workers): live workers are listed with the programs they offer,
dead ones drop out and are deleted; the dashboard lists them and a sweep page says when no live
worker offers the sweep's program."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from app.config import Settings
from app.db import db_now, read_session, write_session
from app.main import create_app
from app.models import Worker as WorkerRow
from app.services import workers
from tests.conftest import wait_for
from tests.factories import make_sweep
from worker.main import Worker

LEASE = 5.0


def rows(engine: Engine) -> list[str]:
    with read_session(engine) as s:
        return sorted(s.scalars(select(WorkerRow.id)))


def age(engine: Engine, worker_id: str, seconds: float) -> None:
    with write_session(engine) as s:
        s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(heartbeat_at=db_now() - seconds))


def test_live_workers_are_listed_and_dead_ones_dropped(engine: Engine) -> None:
    workers.beat(engine, "a", "host-a", 11, ["fit_b", "fit_a", "fit_a"], LEASE)
    workers.beat(engine, "b", "host-b", 22, [], LEASE)
    live = workers.live_workers(engine, LEASE)
    assert [(w.id, w.host, w.pid, w.programs) for w in live] == [("a", "host-a", 11, ["fit_a", "fit_b"]),
                                                                  ("b", "host-b", 22, [])]
    started = live[0].started_at
    workers.beat(engine, "a", "host-a", 11, ["fit_c"], LEASE)  # a renewal: programs now, started kept
    again = workers.live_workers(engine, LEASE)[0]
    assert again.programs == ["fit_c"] and again.started_at == started and again.heartbeat_at >= live[0].heartbeat_at
    # b misses its heartbeats for just under, then just over, DEAD_AFTER_LEASES leases
    age(engine, "b", workers.DEAD_AFTER_LEASES * LEASE - 2)
    assert [w.id for w in workers.live_workers(engine, LEASE)] == ["a", "b"]
    age(engine, "b", workers.DEAD_AFTER_LEASES * LEASE + 2)
    assert [w.id for w in workers.live_workers(engine, LEASE)] == ["a"]
    assert rows(engine) == ["a", "b"]  # not listed, but still there ...
    workers.beat(engine, "a", "host-a", 11, ["fit_c"], LEASE)
    assert rows(engine) == ["a"]  # ... until a live worker's heartbeat deletes it
    assert [w.id for w in workers.offering(engine, "fit_c", LEASE)] == ["a"]
    assert workers.offering(engine, "fit_a", LEASE) == []
    workers.remove(engine, "a")
    assert rows(engine) == []


def test_a_worker_registers_its_programs_beats_and_leaves(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "programs"
    folder.mkdir()
    for name in ("fit_one.py", "fit-two.py", "not a program.py", "notes.txt", ".hidden.py"):
        (folder / name).write_text("print('hi')\n")
    (folder / "a_folder.py").mkdir()
    worker = Worker(settings.model_copy(update={"programs_dir": folder}), engine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: rows(engine) == [worker.worker_id], 10, message="the worker's row")
        (me,) = workers.live_workers(engine, settings.lease_seconds)
        assert me.programs == ["fit-two", "fit_one"] and me.pid > 0 and me.host
        (folder / "fit_three.py").write_text("print('new')\n")  # rescanned with the next heartbeat
        wait_for(lambda: "fit_three" in workers.live_workers(engine, settings.lease_seconds)[0].programs, 10,
                 message="the new program to be offered")
        first = me.heartbeat_at
        wait_for(lambda: workers.live_workers(engine, settings.lease_seconds)[0].heartbeat_at > first, 10,
                 message="a later heartbeat")
    finally:
        worker.shutdown.set()
        thread.join(20)
    assert rows(engine) == []  # a clean stop takes the row away


def test_the_api_and_pages_show_workers_and_who_offers_a_program(settings: Settings, engine: Engine) -> None:
    prog = make_sweep(engine, program="fit_blobs", params={"units": 4}).id
    plain = make_sweep(engine).id
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        assert api.get("/api/workers").json() == []
        assert "No live worker" in api.get("/").text
        page = api.get(f"/sweeps/{prog}").text
        assert 'id="program-workers"' in page and "no live worker offers it" in page
        assert 'id="program-workers"' not in api.get(f"/sweeps/{plain}").text
        workers.beat(engine, "w1", "gpu-box <b>1</b>", 4242, ["fit_blobs"], settings.lease_seconds)
        workers.beat(engine, "w2", "cpu-box", 7, [], settings.lease_seconds)
        body = api.get("/api/workers").json()
        assert [(w["id"], w["host"], w["pid"], w["programs"]) for w in body] == [
            ("w1", "gpu-box <b>1</b>", 4242, ["fit_blobs"]), ("w2", "cpu-box", 7, [])]
        assert {"started_at", "heartbeat_at"} <= set(body[0])
        index = api.get("/").text
        assert 'data-worker-id="w1"' in index and "gpu-box &lt;b&gt;1&lt;/b&gt;" in index and "4242" in index
        page = api.get(f"/sweeps/{prog}").text
        assert "offered by 1 live worker (gpu-box &lt;b&gt;1&lt;/b&gt;)" in page
        age(engine, "w1", workers.DEAD_AFTER_LEASES * settings.lease_seconds + 1)
        assert [w["id"] for w in api.get("/api/workers").json()] == ["w2"]
        assert "no live worker offers it" in api.get(f"/sweeps/{prog}").text
