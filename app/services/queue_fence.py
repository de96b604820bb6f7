"""What every step of the run queue shares: the fence on a held run's writes, and the run's event log.

A write carries `_fence(run_id, token)`: `lease_token = :token AND status = RunStatus.RUNNING`; if it
updates nothing the worker has lost the run and must stop (RELIABILITY.md, "Fencing"). Re-exported by
app.services.queue, the one import path of the queue.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_
from sqlalchemy.orm import Session

from app.models import Run, RunEvent, RunStatus


def _fence(run_id: int, token: str) -> Any:
    return and_(Run.id == run_id, Run.lease_token == token, Run.status == RunStatus.RUNNING.value)


def _event(session: Session, run_id: int, kind: str, worker_id: str | None = None,
           epoch: int | None = None, message: str | None = None) -> None:
    session.add(RunEvent(run_id=run_id, kind=kind, worker_id=worker_id, epoch=epoch, message=message))

