"""The event stream: what a poll reads and sends (app.services.stream) and the SSE endpoint.

Every change reaches an open stream exactly once, whatever the interleaving: a run created while a
poll reads, metric ids reused by SQLite after a retry, PostgreSQL transactions committing out of id
order. An idle poll reads the sweep's counter row and nothing else."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, insert, select, text

from app.db import make_engine, read_session, write_session
from app.models import Metric, Run, RunStatus
from app.services.queue import claim_runs, finish_run, record_epoch
from app.services.stream import Changes, changes_since, stream_cursor
from app.services.sweeps import create_sweep, parse_spec, retry_failed
from tests.conftest import LiveServer

SPEC: dict[str, Any] = {"name": "stream", "dataset": "mnist", "epochs": 5, "replicates": 3}


def new_sweep(engine: Engine, replicates: int = 3) -> int:
    return create_sweep(engine, parse_spec({**SPEC, "replicates": replicates}), 10_000, 3).id


def drain(engine: Engine, sweep_id: int, cursor: int = 0, **kw: Any) -> Changes:
    """Poll until nothing is left; everything sent, with the last cursor."""
    out = Changes(cursor)
    while True:
        got = changes_since(engine, sweep_id, out.cursor, **kw)
        out.points += got.points
        out.statuses |= got.statuses
        if got.cursor == out.cursor:
            return out
        out.cursor = got.cursor


def epochs_of(changes: Changes, run_id: int) -> list[int]:
    return sorted(p["epoch"] for p in changes.points if p["run_id"] == run_id and p["key"] == "loss")


def add_run_with_points(url: str, sweep_id: int, epochs: int = 2) -> int:
    """What an external run does: a new run of the sweep and its epochs, in one commit elsewhere."""
    other = make_engine(url)
    try:
        with write_session(other) as s:
            config_id = s.scalar(select(Run.config_id).where(Run.sweep_id == sweep_id).limit(1))
            run_id = int(s.scalar(insert(Run).values(
                sweep_id=sweep_id, config_id=config_id, seed=99, status=RunStatus.RUNNING.value, source="external",
                epochs=5, last_epoch=epochs - 1, created_at=0.0).returning(Run.id)) or 0)
            s.execute(insert(Metric), [{"run_id": run_id, "key": "loss", "epoch": e, "value": 1.0, "created_at": 0.0}
                                       for e in range(epochs)])
    finally:
        other.dispose()
    return run_id


def test_points_and_statuses_since_a_cursor(engine: Engine) -> None:
    sweep_id = new_sweep(engine)
    claims = claim_runs(engine, "w", 2, 60)
    first = drain(engine, sweep_id)
    with read_session(engine) as s:
        assert first.statuses == {str(r.id): r.status for r in s.execute(select(Run.id, Run.status))}
    assert sorted(first.statuses.values()) == ["queued", "running", "running"]
    assert first.cursor == stream_cursor(engine, sweep_id) and first.points == []
    record_epoch(engine, claims[0], 0, {"loss": 2.0, "accuracy": 0.1}, None, 60)
    got = changes_since(engine, sweep_id, first.cursor)
    assert {(p["run_id"], p["key"], p["epoch"], p["value"]) for p in got.points} == {
        (claims[0].run_id, "loss", 0, 2.0), (claims[0].run_id, "accuracy", 0, 0.1)}
    assert all(p["config_id"] == claims[0].config_id for p in got.points)
    assert got.statuses == {str(claims[0].run_id): "running"}  # only the run that moved
    assert [p["key"] for p in changes_since(engine, sweep_id, first.cursor, keys=["loss"]).points] == ["loss"]
    assert changes_since(engine, sweep_id, first.cursor, run_id=claims[1].run_id).points == []


def test_a_poll_sends_the_aggregated_cells_its_points_touched(engine: Engine) -> None:
    """With the points, a sweep's poll sends the curve cells they touched, as /aggregates answers
    them and as of the poll's snapshot, so a page updates its curves without a request; a run's
    stream sends none."""
    from app.services import charts

    sweep_id = new_sweep(engine)
    a, b, c = claim_runs(engine, "w", 3, 60)
    cursor = drain(engine, sweep_id).cursor
    record_epoch(engine, a, 0, {"loss": 2.0, "accuracy": 0.1}, None, 60)
    record_epoch(engine, b, 0, {"loss": 1.0, "accuracy": 0.3}, None, 60)
    got = changes_since(engine, sweep_id, cursor)
    whole = charts.aggregate_series(engine, ["loss", "accuracy"], sweep_id=sweep_id)["series"]
    assert got.cells == {str(a.config_id): {k: whole[str(a.config_id)][k] for k in ("accuracy", "loss")}}
    assert got.cells[str(a.config_id)]["loss"]["mean"] == [1.5]
    assert got.cells[str(a.config_id)]["loss"]["n"] == [2]
    record_epoch(engine, c, 1, {"loss": 4.0}, None, 60)  # only the cells of what moved
    later = changes_since(engine, sweep_id, got.cursor)
    assert later.cells == {str(c.config_id): {"loss": {"epochs": [1], "mean": [4.0], "std": [None], "min": [4.0],
                                                          "max": [4.0], "n": [1]}}}
    assert changes_since(engine, sweep_id, cursor, run_id=a.run_id).cells is None


def test_a_full_batch_stops_the_cursor_at_its_last_point(engine: Engine) -> None:
    sweep_id = new_sweep(engine, replicates=1)
    (claim,) = claim_runs(engine, "w", 1, 60)
    for epoch in range(5):
        record_epoch(engine, claim, epoch, {"loss": 1.0 / (epoch + 1)}, None, 60)
    batches = []
    cursor = 0
    while (got := changes_since(engine, sweep_id, cursor, limit=2)).cursor != cursor:
        batches.append([p["epoch"] for p in got.points])
        cursor = got.cursor
    assert [e for b in batches for e in b] == [0, 1, 2, 3, 4]  # none twice, none lost
    assert max(len(b) for b in batches) == 2


def test_a_batch_holds_whole_commits(engine: Engine) -> None:
    """PostgreSQL numbers a commit once: a batch may not end inside it, nor split it over polls."""
    sweep_id = new_sweep(engine, replicates=1)
    (claim,) = claim_runs(engine, "w", 1, 60)
    cursor = drain(engine, sweep_id).cursor
    with write_session(engine) as s:
        s.execute(insert(Metric), [{"run_id": claim.run_id, "key": "loss", "epoch": e, "value": 1.0,
                                    "created_at": 0.0} for e in range(5)])
    record_epoch(engine, claim, 5, {"loss": 0.5}, None, 60)
    got = [changes_since(engine, sweep_id, cursor, limit=2)]
    while got[-1].points:
        got.append(changes_since(engine, sweep_id, got[-1].cursor, limit=2))
    assert [p["epoch"] for c in got for p in c.points] == [0, 1, 2, 3, 4, 5]
    sizes = [len(c.points) for c in got if c.points]
    assert sizes == ([5, 1] if engine.dialect.name == "postgresql" else [2, 2, 2])


def test_an_idle_poll_reads_only_the_counter(engine: Engine) -> None:
    sweep_id = new_sweep(engine, replicates=200)
    for claim in claim_runs(engine, "w", 4, 60):
        record_epoch(engine, claim, 0, {"loss": 1.0}, None, 60)
    cursor = drain(engine, sweep_id).cursor
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        idle = changes_since(engine, sweep_id, cursor)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert (idle.cursor, idle.points, idle.statuses) == (cursor, [], {})
    assert len(statements) == 1 and "FROM sweep_seqs" in statements[0], statements  # one row by primary key


def test_a_run_created_during_a_poll_is_not_skipped(engine: Engine) -> None:
    """The run and its points commit between the poll's statements: they are in this poll or the next."""
    sweep_id = new_sweep(engine)
    cursor = drain(engine, sweep_id).cursor
    created: list[int] = []

    def write_in_between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not created:
            created.append(add_run_with_points(str(engine.url.render_as_string(hide_password=False)), sweep_id))

    event.listen(engine, "after_cursor_execute", write_in_between)
    try:
        during = changes_since(engine, sweep_id, cursor)
    finally:
        event.remove(engine, "after_cursor_execute", write_in_between)
    after = drain(engine, sweep_id, during.cursor)
    (run_id,) = created
    assert epochs_of(during, run_id) + epochs_of(after, run_id) == [0, 1]
    assert {**during.statuses, **after.statuses}[str(run_id)] == "running"


def test_a_retried_run_s_new_points_reach_an_open_stream(engine: Engine) -> None:
    """SQLite gives the deleted metric ids out again; the commit sequence never goes back."""
    sweep_id = new_sweep(engine, replicates=1)
    (claim,) = claim_runs(engine, "w", 1, 60)
    for epoch in range(3):
        record_epoch(engine, claim, epoch, {"loss": 1.0}, None, 60)
    finish_run(engine, claim, RunStatus.FAILED, "boom")
    seen = drain(engine, sweep_id)
    with read_session(engine) as s:
        old_ids = set(s.scalars(select(Metric.id)))
    retry_failed(engine, sweep_id)
    (again,) = claim_runs(engine, "w", 1, 60)
    for epoch in range(2):
        record_epoch(engine, again, epoch, {"loss": 0.5}, None, 60)
    with read_session(engine) as s:
        new_ids = set(s.scalars(select(Metric.id)))
    if engine.dialect.name == "sqlite":
        assert new_ids <= old_ids  # the ids were reused: a cursor of ids would skip these points
    after = drain(engine, sweep_id, seen.cursor)
    assert epochs_of(after, claim.run_id) == [0, 1]
    assert after.statuses == {str(claim.run_id): "running"}


def test_transactions_committing_out_of_id_order_are_both_delivered(engine: Engine) -> None:
    """PostgreSQL: T1 takes a metric id, T2 takes thousands of later ones and commits first."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    sweep_id = new_sweep(engine, replicates=2)
    first, second = claim_runs(engine, "w", 2, 60)
    cursor = drain(engine, sweep_id).cursor
    slow = engine.connect()
    t1 = slow.begin()
    slow.execute(insert(Metric).values(run_id=first.run_id, key="loss", epoch=0, value=1.0, created_at=0.0))
    with write_session(engine) as s:  # T2: ids far above T1's, committed while T1 is open
        s.execute(insert(Metric), [{"run_id": second.run_id, "key": f"k{i}", "epoch": 0, "value": 0.0,
                                    "created_at": 0.0} for i in range(2500)])
    middle = drain(engine, sweep_id, cursor)
    assert len(middle.points) == 2500
    t1.commit()
    slow.close()
    late = drain(engine, sweep_id, middle.cursor)
    assert [(p["run_id"], p["key"]) for p in late.points] == [(first.run_id, "loss")]
    with read_session(engine) as s:
        t1_id = s.scalar(select(Metric.id).where(Metric.run_id == first.run_id))
        assert t1_id is not None and t1_id < min(s.scalars(select(Metric.id).where(Metric.run_id == second.run_id)))


def test_two_writers_of_a_sweep_wait_for_the_counter_only_at_commit(engine: Engine) -> None:
    """PostgreSQL: the counter lock is taken at COMMIT, so a writer holding run rows never waits on it
    while it still needs more (a claim's FOR UPDATE against a cancel of the sweep cannot deadlock)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    sweep_id = new_sweep(engine, replicates=2)
    a, b = claim_runs(engine, "w", 2, 60)
    conn1, conn2 = engine.connect(), engine.connect()
    try:
        conn1.begin()
        conn1.execute(text("UPDATE runs SET last_epoch = 0 WHERE id = :r"), {"r": a.run_id})
        conn2.begin()
        conn2.execute(text("SET LOCAL lock_timeout = '3s'"))
        conn2.execute(text("UPDATE runs SET last_epoch = 0 WHERE id = :r"), {"r": b.run_id})  # does not wait
        conn2.execute(text("UPDATE runs SET cancel_requested = true WHERE id = :r"), {"r": b.run_id})
        conn2.commit()
        conn1.commit()
    finally:
        conn1.close()
        conn2.close()
    got = drain(engine, sweep_id)
    with read_session(engine) as s:
        seqs = dict(s.execute(select(Run.id, Run.seq).where(Run.sweep_id == sweep_id)).all())
    assert seqs[b.run_id] < seqs[a.run_id] == got.cursor  # in commit order


# ---- the SSE endpoint, over real HTTP ------------------------------------------------------------

def read_events(response: httpx.Response) -> Iterator[tuple[str | None, str, Any]]:
    """(id, event, data) of each event of an SSE response."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "event" in fields:
                yield fields.get("id"), fields["event"], json.loads(fields["data"])
            fields = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value.strip()


def wait_for_points(url: str, want: int, headers: dict[str, str] | None = None,
                    timeout: float = 15) -> tuple[list[Any], list[tuple[str | None, str, Any]]]:
    """Read the stream until WANT points came; the points and every event seen."""
    points: list[Any] = []
    seen = []
    with httpx.stream("GET", url, headers=headers or {}, timeout=timeout) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + timeout
        for item in read_events(response):
            seen.append(item)
            if item[1] == "epochs":
                points += item[2]["points"]
            if len(points) >= want or time.monotonic() > deadline:
                break
    return points, seen


@pytest.mark.slow
def test_the_stream_endpoint_sends_and_resumes(live_server: LiveServer, engine: Engine) -> None:
    sweep_id = new_sweep(engine, replicates=2)
    claims = claim_runs(engine, "w", 2, 60)
    record_epoch(engine, claims[0], 0, {"loss": 1.0}, None, 60)
    url = f"{live_server.url}/api/sweeps/{sweep_id}/stream"
    points, seen = wait_for_points(f"{url}?cursor=0", 1)
    assert seen[0][1] == "status" and seen[0][2] == {str(c.run_id): "running" for c in claims}
    (epoch_id, name, data) = seen[-1]
    assert name == "epochs" and data["cursor"] == int(epoch_id or 0) == stream_cursor(engine, sweep_id)
    assert [(p["run_id"], p["epoch"]) for p in points] == [(claims[0].run_id, 0)]
    record_epoch(engine, claims[0], 1, {"loss": 0.5}, None, 60)
    resumed, seen = wait_for_points(url, 1, headers={"last-event-id": str(data["cursor"])})
    assert [(p["run_id"], p["epoch"]) for p in resumed] == [(claims[0].run_id, 1)]  # nothing again
    assert seen[0] == (None, "status", {str(claims[0].run_id): "running"})
    with httpx.stream("GET", url, timeout=10) as response:  # no cursor: what commits from now on
        events = read_events(response)
        assert next(events) == (str(stream_cursor(engine, sweep_id)), "status", {})
        record_epoch(engine, claims[1], 0, {"loss": 0.7}, None, 60)
        assert next(events)[1:] == ("status", {str(claims[1].run_id): "running"})
        (_, name, later) = next(events)
        assert name == "epochs" and [(p["run_id"], p["epoch"]) for p in later["points"]] == [(claims[1].run_id, 0)]
    assert httpx.get(f"{url}?run={claims[0].run_id + 100}", timeout=5).status_code == 404
    assert httpx.get(f"{live_server.url}/api/sweeps/{sweep_id + 1}/stream", timeout=5).status_code == 404


@pytest.mark.slow
def test_a_stream_waiting_for_the_database_does_not_block_the_server(live_server: LiveServer,
                                                                      engine: Engine) -> None:
    """PostgreSQL: while the sweeps table is locked, a new stream waits in the threadpool; static files
    and health answer meanwhile (get_sweep_row on the event loop froze every request)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("needs a lock that blocks readers")
    sweep_id = new_sweep(engine)
    locker = engine.connect()
    locker.begin()
    locker.execute(text("LOCK TABLE sweeps IN ACCESS EXCLUSIVE MODE"))
    answered: list[int] = []

    def open_stream() -> None:
        with httpx.stream("GET", f"{live_server.url}/api/sweeps/{sweep_id}/stream", timeout=20) as response:
            answered.append(response.status_code)

    waiting = threading.Thread(target=open_stream, daemon=True)
    try:
        waiting.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert httpx.get(f"{live_server.url}/static/common.js", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 1.0
        assert answered == []  # the stream still waits for the lock
    finally:
        locker.rollback()
        locker.close()
    waiting.join(20)
    assert answered == [200]


@pytest.mark.slow
def test_many_open_streams_hold_no_connections(live_server: LiveServer, engine: Engine) -> None:
    """More streams than the pool has connections: each holds one only while it polls."""
    sweep_id = new_sweep(engine)
    clients = [httpx.Client(timeout=10) for _ in range(36)]
    streams = [c.stream("GET", f"{live_server.url}/api/sweeps/{sweep_id}/stream") for c in clients]
    try:
        for s in streams:
            assert s.__enter__().status_code == 200
        time.sleep(1.0)  # a few polls each
        t0 = time.monotonic()
        assert httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 1.0
    finally:
        for s in streams:
            s.__exit__(None, None, None)
        for c in clients:
            c.close()
