"""The run queue: claim, heartbeat, record an epoch, finish, release, reap.

Every write a worker makes for a run is *fenced*: it carries `lease_token = :token AND status =
RunStatus.RUNNING`; if it updates nothing the worker has lost the run and must stop. Metric inserts are
idempotent on (run_id, key, epoch). All timestamps come from the database clock. See
RELIABILITY.md in the project's design notes; every function here is one short transaction.

This module is the queue's one import path; the code lives by concept in
- app.services.queue_fence: the fence every held-run write carries, and the run's event log;
- app.services.queue_claims: claiming runs (Claim, claim_runs, claims_with_token, new_token);
- app.services.queue_writes: what a worker holding a run writes (heartbeat, record_epoch,
  record_provenance, record_output, restart_run, finish_run) and the checkpoint it resumes from;
- app.services.queue_returns: giving runs back (release_run, requeue_crashed, reap_expired).
"""

from __future__ import annotations

from app.models import RunStatus
from app.services.queue_claims import Claim, claim_runs, claims_with_token, new_token
from app.services.queue_returns import ReapResult, reap_expired, release_run, requeue_crashed
from app.services.queue_writes import (
    LeaseState,
    WriteOutcome,
    finish_run,
    heartbeat,
    load_checkpoint,
    record_epoch,
    record_output,
    record_provenance,
    restart_run,
)

__all__ = [
    "Claim",
    "LeaseState",
    "ReapResult",
    "RunStatus",
    "WriteOutcome",
    "claim_runs",
    "claims_with_token",
    "finish_run",
    "heartbeat",
    "load_checkpoint",
    "new_token",
    "reap_expired",
    "record_epoch",
    "record_output",
    "record_provenance",
    "release_run",
    "requeue_crashed",
    "restart_run",
]
