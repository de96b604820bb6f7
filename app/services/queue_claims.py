"""Claiming runs from the queue: the oldest queued run and the rest of its pack, in one statement.

PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: inside BEGIN IMMEDIATE (app.db.write_session). A claim
takes a fresh lease token that fences every later write of the worker for its runs
(app.services.queue_writes, app.services.queue_returns). Re-exported by app.services.queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, select, update
from sqlalchemy.orm import Session

from app.db import db_now, read_session, write_session
from app.models import Config, Run, RunSource, RunStatus
from app.services.queue_fence import add_event


@dataclass(frozen=True)
class Claim:
    """A run this worker holds: what to train and the token that fences its writes."""

    run_id: int
    sweep_id: int
    config_id: int
    seed: int
    attempt: int
    last_epoch: int
    epochs: int
    token: str
    train: dict[str, Any]


def new_token() -> str:
    """A fresh lease token: it fences every write of one claim."""
    return uuid.uuid4().hex


def claim_runs(engine: Engine, worker_id: str, limit: int, lease_seconds: float,
               token: str | None = None, programs: Collection[str] = ()) -> list[Claim]:
    """Atomically claim the oldest queued run and up to limit-1 more of its pack key at the same
    epoch (a pack: runs of any config and sweep whose settings differ at most in learning rate and
    epochs, app/packing.py; oldest first). PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: inside BEGIN
    IMMEDIATE. Each claim carries its own config's settings.
    A caller that retries after an error passes the same TOKEN and asks `claims_with_token` first:
    the failed try may have committed. Runs of a training program are claimed only by a worker
    that names it in PROGRAMS, one at a time (each trains in a process of its own)."""
    token = token or new_token()
    offered = (Run.program.is_(None) | Run.program.in_(sorted(programs))) if programs else Run.program.is_(None)
    queued = and_(Run.status == RunStatus.QUEUED.value, Run.source == RunSource.QUEUE.value, offered)
    with write_session(engine) as s:
        head = s.execute(
            select(Run.config_id, Run.last_epoch, Run.attempt, Run.program, Run.pack_key).where(queued)
            .order_by(Run.id).limit(1).with_for_update(skip_locked=True)
        ).first()
        if head is None:
            return []
        # A queued run with attempts behind it lost its worker (a release gives its attempt back):
        # it may be what killed the process, so it trains alone and never joins a fresh pack.
        alone = head.attempt > 0 or head.program is not None
        # Runs of the head's pack key (ix_runs_pack_key_status_id: one table, see migration 0006), or
        # of its config only if it has none.
        packable = Run.config_id == head.config_id if head.pack_key is None else Run.pack_key == head.pack_key
        picked = (
            select(Run.id)
            .where(queued, packable, Run.last_epoch == head.last_epoch, Run.attempt == head.attempt)
            .order_by(Run.id).limit(1 if alone else max(1, limit))
            .with_for_update(skip_locked=True)
        )
        ids = list(s.scalars(picked))
        rows = s.execute(
            update(Run).where(Run.id.in_(ids), Run.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.RUNNING.value, worker_id=worker_id, lease_token=token,
                    attempt=Run.attempt + 1, lease_expires_at=db_now() + lease_seconds,
                    heartbeat_at=db_now(), started_at=db_now())
            .returning(Run.id, Run.sweep_id, Run.config_id, Run.seed, Run.attempt, Run.last_epoch, Run.epochs)
        ).all()
        if not rows:
            return []
        train = _trains(s, rows)
        for r in rows:
            kind = "resumed" if r.last_epoch >= 0 else "claimed"
            add_event(s, r.id, kind, worker_id, r.last_epoch if r.last_epoch >= 0 else None,
                   f"attempt {r.attempt}")
    return _claims(rows, token, train)


def _trains(s: Session, rows: Any) -> dict[int, dict[str, Any]]:
    """The training settings of the configs of ROWS, by config id."""
    ids = sorted({r.config_id for r in rows})
    return {i: t or {} for i, t in s.execute(select(Config.id, Config.train).where(Config.id.in_(ids))).all()}


def _claims(rows: Any, token: str, trains: dict[int, dict[str, Any]]) -> list[Claim]:
    return sorted(
        (Claim(r.id, r.sweep_id, r.config_id, r.seed, r.attempt, r.last_epoch, r.epochs, token,
               trains.get(r.config_id, {}))
         for r in rows),
        key=lambda c: c.run_id,
    )


def claims_with_token(engine: Engine, token: str) -> list[Claim]:
    """The runs a claim with TOKEN holds (none if it never committed)."""
    with read_session(engine) as s:
        rows = s.execute(
            select(Run.id, Run.sweep_id, Run.config_id, Run.seed, Run.attempt, Run.last_epoch, Run.epochs)
            .where(Run.lease_token == token, Run.status == RunStatus.RUNNING.value)
        ).all()
        if not rows:
            return []
        train = _trains(s, rows)
    return _claims(rows, token, train)
