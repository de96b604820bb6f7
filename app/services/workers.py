"""The workers table: each worker registers when it starts (host, pid, the programs it offers),
renews its row with every heartbeat and removes it when it stops. A row whose heartbeat is older
than DEAD_AFTER_LEASES leases belongs to a worker that died without saying so (SIGKILL, a lost
host): it is never listed, and any worker's heartbeat deletes it. Timestamps are the database's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, select

from app.db import db_now, dialect_insert, read_session, write_session
from app.models import Worker
from app.schemas import WorkerPublic, iso

DEAD_AFTER_LEASES = 3  # missed heartbeats for this many leases: the worker is gone
MAX_PROGRAMS = 1000  # programs a worker row lists (a folder with more is cut, sorted)


def _dead_before(lease_seconds: float) -> Any:
    return db_now() - DEAD_AFTER_LEASES * lease_seconds


def beat(engine: Engine, worker_id: str, host: str, pid: int, programs: Sequence[str], lease_seconds: float) -> None:
    """Register the worker, or renew its row with the programs it offers now; and delete the rows
    of dead workers. A worker whose row was deleted while it was paused registers again (its
    started time is then the time it came back)."""
    listed = sorted(set(programs))[:MAX_PROGRAMS]
    with write_session(engine) as s:
        ins = dialect_insert(s)
        stmt = ins(Worker).values(id=worker_id, host=host[:200], pid=pid, programs=listed, started_at=db_now(),
                                  heartbeat_at=db_now())
        s.execute(stmt.on_conflict_do_update(index_elements=["id"],
                                             set_={"programs": listed, "heartbeat_at": db_now()}))
        s.execute(delete(Worker).where(Worker.heartbeat_at < _dead_before(lease_seconds), Worker.id != worker_id))


def remove(engine: Engine, worker_id: str) -> None:
    """A worker stopping cleanly takes its row away."""
    with write_session(engine) as s:
        s.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(engine: Engine, lease_seconds: float) -> list[WorkerPublic]:
    """Workers whose last heartbeat is within DEAD_AFTER_LEASES leases, oldest first."""
    with read_session(engine) as s:
        rows = s.scalars(select(Worker).where(Worker.heartbeat_at >= _dead_before(lease_seconds))
                         .order_by(Worker.started_at, Worker.id)).all()
    return [WorkerPublic(id=w.id, host=w.host, pid=w.pid, programs=list(w.programs or []),
                         started_at=iso(w.started_at), heartbeat_at=iso(w.heartbeat_at)) for w in rows]


def offering(engine: Engine, program: str, lease_seconds: float) -> list[WorkerPublic]:
    """The live workers that offer PROGRAM."""
    return [w for w in live_workers(engine, lease_seconds) if program in w.programs]
