"""What every step of the run queue shares: the fence on a held run's writes, and the run's event log.

A write carries `held_by(run_id, token)`: `lease_token = :token AND status = RunStatus.RUNNING`; if it
updates nothing the worker has lost the run and must stop (RELIABILITY.md, "Fencing"). Used by the
queue's own modules (queue_claims, queue_writes, queue_returns); callers outside the queue go through
app.services.queue.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_
from sqlalchemy.orm import Session

from app.models import Run, RunEvent, RunStatus


def held_by(run_id: int, token: str) -> Any:
    """The fence: the run is still RUNNING under this lease's TOKEN (a WHERE clause)."""
    return and_(Run.id == run_id, Run.lease_token == token, Run.status == RunStatus.RUNNING.value)


def add_event(session: Session, run_id: int, kind: str, worker_id: str | None = None,
              epoch: int | None = None, message: str | None = None) -> None:
    """One line of the run's event log, in SESSION's transaction (it commits with the change it tells)."""
    session.add(RunEvent(run_id=run_id, kind=kind, worker_id=worker_id, epoch=epoch, message=message))

