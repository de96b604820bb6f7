"""The writes of a worker that holds a run: heartbeat, an epoch's record, provenance, output, a
restart from epoch 0, the final state; and the checkpoint it resumes from.

Each is one short fenced transaction (app.services.queue_fence): if it updates nothing the lease is
lost and the worker writes nothing more for the run. Metric inserts are idempotent on (run_id, key,
epoch), and a retry after a lost commit answer changes nothing twice. Re-exported by app.services.queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Engine, case, delete, select, update
from sqlalchemy.orm import Session

from app.db import db_now, dialect_insert, read_session, write_session
from app.models import Artifact, Checkpoint, Metric, Run, RunStatus, metric_value
from app.services.provenance import ATTEMPT, with_earlier
from app.services.queue_claims import Claim
from app.services.queue_fence import add_event, held_by


class WriteOutcome(Enum):
    OK = "ok"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"  # the lease is gone: someone else owns the run, or it ended


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
            update(Run).where(held_by(claim.run_id, claim.token))
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
            held = s.execute(select(Run.provenance).where(held_by(claim.run_id, claim.token))
                             .with_for_update()).first()
            if held is None:
                lost.add(claim.run_id)
                continue
            merged = with_earlier(held.provenance, {**provenance[claim.run_id], ATTEMPT: claim.attempt})
            s.execute(update(Run).where(held_by(claim.run_id, claim.token)).values(provenance=merged))
    return lost


def record_output(engine: Engine, claim: Claim, output: str) -> bool:
    """Store the latest (bounded) output of a held program run, fenced; False if the lease is lost."""
    with write_session(engine) as s:
        return s.execute(update(Run).where(held_by(claim.run_id, claim.token)).values(output=output)
                         .returning(Run.id)).first() is not None


def restart_run(engine: Engine, claim: Claim, reason: str) -> bool:
    """Start a held run over from epoch 0 (fenced): its stored epochs and checkpoint go. For a
    program run claimed again that cannot resume (it keeps no checkpoint): its new epochs would
    otherwise mix with the old ones. False if the lease is lost."""
    with write_session(engine) as s:
        held = s.execute(update(Run).where(held_by(claim.run_id, claim.token))
                         .values(last_epoch=-1, train_seconds=0.0).returning(Run.id)).first()
        if held is None:
            return False
        for table in (Metric, Checkpoint):
            s.execute(delete(table).where(table.run_id == claim.run_id))
        add_event(s, claim.run_id, "restarted", None, None, reason)
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
            update(Run).where(held_by(claim.run_id, claim.token))
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
        add_event(s, claim.run_id, status.value, None, None, error)
    return True


def load_checkpoint(engine: Engine, run_id: int) -> tuple[int, bytes] | None:
    with read_session(engine) as s:
        row = s.execute(select(Checkpoint.epoch, Checkpoint.data).where(Checkpoint.run_id == run_id)).first()
    return (row.epoch, row.data) if row else None
