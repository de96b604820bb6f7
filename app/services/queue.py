"""The run queue: claim, heartbeat, record an epoch, finish, release, reap.

Every write a worker makes for a run is *fenced*: it carries `lease_token = :token AND status =
RunStatus.RUNNING`; if it updates nothing the worker has lost the run and must stop. Metric inserts are
idempotent on (run_id, key, epoch). All timestamps come from the database clock. See
RELIABILITY.md in the project's design notes; every function here is one short transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Engine, and_, case, delete, select, update
from sqlalchemy.orm import Session

from app.db import db_now, dialect_insert, read_session, write_session
from app.models import Artifact, Checkpoint, Config, Metric, Run, RunEvent, RunSource, RunStatus, metric_value
from app.services.provenance import ATTEMPT, with_earlier


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


class WriteOutcome(Enum):
    OK = "ok"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"  # the lease is gone: someone else owns the run, or it ended


def _fence(run_id: int, token: str) -> Any:
    return and_(Run.id == run_id, Run.lease_token == token, Run.status == RunStatus.RUNNING.value)


def _event(session: Session, run_id: int, kind: str, worker_id: str | None = None,
           epoch: int | None = None, message: str | None = None) -> None:
    session.add(RunEvent(run_id=run_id, kind=kind, worker_id=worker_id, epoch=epoch, message=message))


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
            _event(s, r.id, kind, worker_id, r.last_epoch if r.last_epoch >= 0 else None,
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


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


def heartbeat(engine: Engine, claims: list[Claim], lease_seconds: float) -> dict[int, LeaseState]:
    """Renew the leases of CLAIMS; tells, per run, whether it is still held and if cancel was asked."""
    if not claims:
        return {}
    token = claims[0].token
    ids = [c.run_id for c in claims]
    with write_session(engine) as s:
        rows = s.execute(
            update(Run)
            .where(Run.id.in_(ids), Run.lease_token == token, Run.status == RunStatus.RUNNING.value)
            .values(lease_expires_at=db_now() + lease_seconds, heartbeat_at=db_now())
            .returning(Run.id, Run.cancel_requested)
        ).all()
    held = {r.id: bool(r.cancel_requested) for r in rows}
    return {i: LeaseState(i in held, held.get(i, False)) for i in ids}


def _put_artifacts(s: Session, run_id: int, artifacts: Mapping[str, tuple[str, bytes]]) -> None:
    ins = dialect_insert(s)
    for name, (content_type, data) in artifacts.items():
        stmt = ins(Artifact).values(run_id=run_id, name=name, content_type=content_type, data=data,
                                    created_at=db_now())
        s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "name"],
                                             set_={"data": data, "content_type": content_type}))


def record_epoch(
    engine: Engine,
    claim: Claim,
    epoch: int,
    metrics: Mapping[str, float],
    checkpoint: bytes | None,
    lease_seconds: float,
    seconds: float = 0.0,
    artifacts: Mapping[str, tuple[str, bytes]] | None = None,
) -> WriteOutcome:
    """Store one finished epoch of one run in one fenced transaction: metrics (idempotent),
    last_epoch, checkpoint and any artifacts. Renews the lease as a heartbeat does."""
    with write_session(engine) as s:
        row = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token))
            # A retry of an epoch already stored (its commit's answer was lost) adds no time twice.
            .values(last_epoch=epoch,
                    train_seconds=case((Run.last_epoch < epoch, Run.train_seconds + seconds),
                                       else_=Run.train_seconds),
                    lease_expires_at=db_now() + lease_seconds, heartbeat_at=db_now())
            .returning(Run.cancel_requested)
        ).first()
        if row is None:
            return WriteOutcome.LOST
        ins = dialect_insert(s)
        values = [{"run_id": claim.run_id, "key": k, "epoch": epoch, "value": metric_value(v), "created_at": db_now()}
                  for k, v in metrics.items()]
        if values:
            s.execute(ins(Metric).values(values).on_conflict_do_nothing(index_elements=["run_id", "key", "epoch"]))
        if checkpoint is not None:
            stmt = ins(Checkpoint).values(run_id=claim.run_id, epoch=epoch, data=checkpoint, updated_at=db_now())
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id"],
                                                 set_={"epoch": epoch, "data": checkpoint, "updated_at": db_now()}))
        if artifacts:
            _put_artifacts(s, claim.run_id, artifacts)
    return WriteOutcome.CANCEL_REQUESTED if row.cancel_requested else WriteOutcome.OK


def record_provenance(engine: Engine, claims: list[Claim], provenance: Mapping[int, dict[str, Any]]) -> set[int]:
    """Store each held run's provenance for this attempt (PROVENANCE by run id), fenced, in one
    transaction; the attempt's record goes on top and the run's earlier one into `earlier`
    (app.services.provenance.with_earlier, idempotent on a retry). Answers the run ids whose lease
    is lost (nothing is written for them)."""
    lost: set[int] = set()
    with write_session(engine) as s:
        for claim in claims:
            if claim.run_id not in provenance:
                continue
            held = s.execute(select(Run.provenance).where(_fence(claim.run_id, claim.token))
                             .with_for_update()).first()
            if held is None:
                lost.add(claim.run_id)
                continue
            merged = with_earlier(held.provenance, {**provenance[claim.run_id], ATTEMPT: claim.attempt})
            s.execute(update(Run).where(_fence(claim.run_id, claim.token)).values(provenance=merged))
    return lost


def record_output(engine: Engine, claim: Claim, output: str) -> bool:
    """Store the latest (bounded) output of a held program run, fenced; False if the lease is lost."""
    with write_session(engine) as s:
        return s.execute(update(Run).where(_fence(claim.run_id, claim.token)).values(output=output)
                         .returning(Run.id)).first() is not None


def restart_run(engine: Engine, claim: Claim, reason: str) -> bool:
    """Start a held run over from epoch 0 (fenced): its stored epochs and checkpoint go. For a
    program run claimed again that cannot resume (it keeps no checkpoint): its new epochs would
    otherwise mix with the old ones. False if the lease is lost."""
    with write_session(engine) as s:
        held = s.execute(update(Run).where(_fence(claim.run_id, claim.token))
                         .values(last_epoch=-1, train_seconds=0.0).returning(Run.id)).first()
        if held is None:
            return False
        for table in (Metric, Checkpoint):
            s.execute(delete(table).where(table.run_id == claim.run_id))
        _event(s, claim.run_id, "restarted", None, None, reason)
    return True


def finish_run(
    engine: Engine,
    claim: Claim,
    status: RunStatus,
    error: str | None = None,
    artifacts: Mapping[str, tuple[str, bytes]] | None = None,
) -> bool:
    """End a held run in a final state (fenced); False if the lease was already lost.

    The run keeps its lease token, so that a retry after a commit whose answer was lost (a
    connection cut at COMMIT) sees its own finish and answers True again."""
    with write_session(engine) as s:
        done = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token))
            .values(status=status.value, error=error, finished_at=db_now(), lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if done is None:
            return s.scalar(select(Run.id).where(Run.id == claim.run_id, Run.lease_token == claim.token,
                                                 Run.status == status.value)) is not None
        if artifacts:
            _put_artifacts(s, claim.run_id, artifacts)
        if status == RunStatus.SUCCEEDED:  # its model artifact supersedes the checkpoint
            s.execute(delete(Checkpoint).where(Checkpoint.run_id == claim.run_id))
        _event(s, claim.run_id, status.value, None, None, error)
    return True


def release_run(engine: Engine, claim: Claim, reason: str = "worker stopping") -> bool:
    """Give a held run back to the queue (graceful shutdown); the claim does not count as an attempt.
    A run whose cancel is pending ends cancelled instead: queued again, it would train another epoch."""
    with write_session(engine) as s:
        cancelled = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token), Run.cancel_requested.is_(True))
            .values(status=RunStatus.CANCELLED.value, finished_at=db_now(), lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if cancelled is not None:
            _event(s, claim.run_id, RunStatus.CANCELLED.value, None, None, f"cancel asked; {reason}")
            return True
        done = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token))
            .values(status=RunStatus.QUEUED.value, worker_id=None, lease_token=None,
                    lease_expires_at=None, attempt=Run.attempt - 1)
            .returning(Run.id)
        ).first()
        if done is not None:
            _event(s, claim.run_id, "released", None, None, reason)
    return done is not None


def requeue_crashed(engine: Engine, claim: Claim, error: str) -> RunStatus | None:
    """Give back a held run whose pack crashed as a whole (out of memory): its attempt counts, as
    a crash's does, so it trains alone next time; after max_attempts it ends failed with ERROR.
    None if the lease was already lost."""
    with write_session(engine) as s:
        failed = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token), Run.attempt >= Run.max_attempts)
            .values(status=RunStatus.FAILED.value, error=error, finished_at=db_now(), lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if failed is not None:
            _event(s, claim.run_id, RunStatus.FAILED.value, None, None, error)
            return RunStatus.FAILED
        requeued = s.execute(
            update(Run).where(_fence(claim.run_id, claim.token))
            .values(status=RunStatus.QUEUED.value, worker_id=None, lease_token=None, lease_expires_at=None)
            .returning(Run.id)
        ).first()
        if requeued is None:
            return None
        _event(s, claim.run_id, "requeued", None, None, error)
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
                _event(s, run_id, kind, None, None, "lease expired")
    return ReapResult(requeued, failed, cancelled)


def load_checkpoint(engine: Engine, run_id: int) -> tuple[int, bytes] | None:
    with read_session(engine) as s:
        row = s.execute(select(Checkpoint.epoch, Checkpoint.data).where(Checkpoint.run_id == run_id)).first()
    return (row.epoch, row.data) if row else None
