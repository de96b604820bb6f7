"""Giving runs back: a worker's release at shutdown, the requeue of a crashed pack, and the reaper
of expired leases (requeued, failed after max_attempts, or cancelled).

Release and requeue are fenced (app.services.queue_fence); the reaper is safe from many processes at
once and reads its cutoff once from the database clock. Re-exported by app.services.queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, and_, select, update

from app.db import db_now, write_session
from app.models import Run, RunSource, RunStatus
from app.services.queue_claims import Claim
from app.services.queue_fence import add_event, held_by


def release_run(engine: Engine, claim: Claim, reason: str = "worker stopping") -> bool:
    """Give a held run back to the queue (graceful shutdown); the claim does not count as an attempt.
    A run whose cancel is pending ends cancelled instead: queued again, it would train another epoch."""
    with write_session(engine) as s:
        cancelled = s.execute(
            update(Run).where(held_by(claim.run_id, claim.token), Run.cancel_requested.is_(True))
            .values(status=RunStatus.CANCELLED.value, finished_at=db_now(), lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if cancelled is not None:
            add_event(s, claim.run_id, RunStatus.CANCELLED.value, None, None, f"cancel asked; {reason}")
            return True
        done = s.execute(
            update(Run).where(held_by(claim.run_id, claim.token))
            .values(status=RunStatus.QUEUED.value, worker_id=None, lease_token=None,
                    lease_expires_at=None, attempt=Run.attempt - 1)
            .returning(Run.id)
        ).first()
        if done is not None:
            add_event(s, claim.run_id, "released", None, None, reason)
    return done is not None


def requeue_crashed(engine: Engine, claim: Claim, error: str) -> RunStatus | None:
    """Give back a held run whose pack crashed as a whole (out of memory): its attempt counts, as
    a crash's does, so it trains alone next time; after max_attempts it ends failed with ERROR.
    None if the lease was already lost."""
    with write_session(engine) as s:
        failed = s.execute(
            update(Run).where(held_by(claim.run_id, claim.token), Run.attempt >= Run.max_attempts)
            .values(status=RunStatus.FAILED.value, error=error, finished_at=db_now(), lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if failed is not None:
            add_event(s, claim.run_id, RunStatus.FAILED.value, None, None, error)
            return RunStatus.FAILED
        requeued = s.execute(
            update(Run).where(held_by(claim.run_id, claim.token))
            .values(status=RunStatus.QUEUED.value, worker_id=None, lease_token=None, lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if requeued is None:
            return None
        add_event(s, claim.run_id, "requeued", None, None, error)
    return RunStatus.QUEUED


@dataclass(frozen=True)
class ReapResult:
    requeued: list[int]
    failed: list[int]
    cancelled: list[int]


def reap_expired(engine: Engine) -> ReapResult:
    """Return runs whose lease expired to the queue (or fail them after max_attempts, or cancel
    them if cancel was asked). Safe to run from many processes at once: the loser changes nothing.
    The three UPDATEs share one cutoff read once from the database clock: the clock moves between
    statements, and a run whose lease expired after the "failed" UPDATE but before the "requeued"
    one would go back to the queue with its attempts used up (and train a fourth time of three)."""
    with write_session(engine) as s:
        cutoff = float(s.scalar(select(db_now())) or 0.0)
        expired = and_(Run.status == RunStatus.RUNNING.value, Run.source == RunSource.QUEUE.value,
                       Run.lease_expires_at < cutoff)
        cancelled = list(s.scalars(
            update(Run).where(expired, Run.cancel_requested.is_(True))
            .values(status=RunStatus.CANCELLED.value, finished_at=db_now(), lease_token=None,
                    lease_expires_at=None)
            .returning(Run.id)
        ))
        failed = list(s.scalars(
            update(Run).where(expired, Run.attempt >= Run.max_attempts)
            .values(status=RunStatus.FAILED.value, finished_at=db_now(), lease_token=None, lease_expires_at=None,
                    error="the worker running it stopped answering (lease expired) on every one of its "
                          "attempts; the run may crash its process (e.g. out of memory)")
            .returning(Run.id)
        ))
        requeued = list(s.scalars(
            update(Run).where(expired)
            .values(status=RunStatus.QUEUED.value, worker_id=None, lease_token=None, lease_expires_at=None)
            .returning(Run.id)
        ))
        kinds = ((cancelled, RunStatus.CANCELLED.value), (failed, RunStatus.FAILED.value), (requeued, "requeued"))
        for ids, kind in kinds:
            for run_id in ids:
                add_event(s, run_id, kind, None, None, "lease expired")
    return ReapResult(requeued, failed, cancelled)
