"""The run queue on a real database: claiming, packs, leases, fencing, reaping, cancel."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, event, update

from app.db import write_session
from app.errors import InvalidTransition
from app.models import Run, RunStatus
from app.services.queue import (
    WriteOutcome,
    claim_runs,
    claims_with_token,
    finish_run,
    heartbeat,
    load_checkpoint,
    reap_expired,
    record_epoch,
    release_run,
    requeue_crashed,
)
from app.services.runs import cancel_run
from tests.factories import events_of, get_run, make_sweep, metric_rows, runs_of

LEASE = 30.0


def expire(engine: Engine, run_id: int) -> None:
    """Move a lease into the past, as if its worker had stopped renewing it."""
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=Run.lease_expires_at - 3600))


def test_claim_takes_the_oldest_run_and_packs_its_config(engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=3, grid={"model.hidden": [[4], [8]]})
    first = claim_runs(engine, "w1", 10, LEASE)
    assert [c.run_id for c in first] == [r.id for r in runs_of(engine, sweep.id)[:3]]
    assert len({c.config_id for c in first}) == 1 and all(c.attempt == 1 for c in first)
    second = claim_runs(engine, "w2", 2, LEASE)
    assert len(second) == 2 and second[0].config_id != first[0].config_id
    assert len(claim_runs(engine, "w3", 10, LEASE)) == 1
    assert claim_runs(engine, "w4", 10, LEASE) == []
    assert {r.status for r in runs_of(engine, sweep.id)} == {"running"}


def test_claim_race_exactly_one_winner(engine: Engine) -> None:
    """Many claimers released together at one queued run, many times: exactly one wins."""
    claimers, rounds = 8, 15
    for _ in range(rounds):
        make_sweep(engine, replicates=1)
        barrier = threading.Barrier(claimers)
        won: list[int] = []
        lock = threading.Lock()

        def claim(i: int, barrier: threading.Barrier = barrier, won: list[int] = won,
                  lock: threading.Lock = lock) -> None:
            barrier.wait()
            got = claim_runs(engine, f"w{i}", 1, LEASE)
            with lock:
                won.extend(c.run_id for c in got)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(claimers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1


def test_record_epoch_is_fenced_and_idempotent(engine: Engine) -> None:
    sweep = make_sweep(engine)
    (claim,) = claim_runs(engine, "w1", 1, LEASE)
    metrics = {"loss": 1.0, "accuracy": 0.5, "nan_metric": float("nan")}
    assert record_epoch(engine, claim, 0, metrics, b"ckpt0", LEASE) is WriteOutcome.OK
    assert record_epoch(engine, claim, 0, {"loss": 9.0}, b"ckpt0", LEASE) is WriteOutcome.OK  # a retry
    rows = metric_rows(engine, claim.run_id)
    assert rows == [("accuracy", 0, 0.5), ("loss", 0, 1.0), ("nan_metric", 0, None)]
    assert load_checkpoint(engine, claim.run_id) == (0, b"ckpt0")
    assert get_run(engine, claim.run_id).last_epoch == 0
    assert sweep.runs == 1


def test_a_worker_that_lost_its_lease_writes_nothing(engine: Engine) -> None:
    make_sweep(engine)
    (old,) = claim_runs(engine, "slow", 1, LEASE)
    record_epoch(engine, old, 0, {"loss": 1.0}, b"c0", LEASE)
    expire(engine, old.run_id)
    assert reap_expired(engine).requeued == [old.run_id]
    (new,) = claim_runs(engine, "fast", 1, LEASE)
    assert new.run_id == old.run_id and new.attempt == 2 and new.last_epoch == 0 and new.token != old.token
    # The old holder wakes up: every fenced write is refused.
    assert record_epoch(engine, old, 1, {"loss": 0.1}, b"stale", LEASE) is WriteOutcome.LOST
    assert heartbeat(engine, [old], LEASE)[old.run_id].held is False
    assert finish_run(engine, old, RunStatus.SUCCEEDED) is False
    assert release_run(engine, old) is False
    assert metric_rows(engine, old.run_id) == [("loss", 0, 1.0)]
    assert load_checkpoint(engine, old.run_id) == (0, b"c0")
    assert record_epoch(engine, new, 1, {"loss": 0.5}, b"c1", LEASE) is WriteOutcome.OK
    assert finish_run(engine, new, RunStatus.SUCCEEDED)
    run = get_run(engine, new.run_id)
    assert run.status == "succeeded" and run.attempt == 2
    assert events_of(engine, run.id) == ["claimed", "requeued", "resumed", "succeeded"]


def test_reaper_fails_a_run_after_max_attempts(engine: Engine) -> None:
    make_sweep(engine, max_attempts=2)
    for attempt in (1, 2):
        (claim,) = claim_runs(engine, f"w{attempt}", 1, LEASE)
        assert claim.attempt == attempt
        expire(engine, claim.run_id)
        result = reap_expired(engine)
    assert result.failed == [claim.run_id] and result.requeued == []
    run = get_run(engine, claim.run_id)
    assert run.status == "failed" and "lease expired" in (run.error or "")
    assert claim_runs(engine, "w3", 1, LEASE) == []


def test_a_lease_expiring_while_the_reaper_runs_never_requeues_a_used_up_run(engine: Engine) -> None:
    """The database clock moves between the reaper's statements: a run on its last attempt whose
    lease expires after the "failed" UPDATE but before the "requeued" one must not go back to the
    queue (it trained a fourth time of three under load). The reaper reads its cutoff once."""
    make_sweep(engine, max_attempts=1)
    (claim,) = claim_runs(engine, "w", 1, 0.6)
    updates: list[str] = []

    def slow_third_update(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE RUNS"):
            updates.append(statement)
            if len(updates) == 3:  # the "requeued" UPDATE: by now the lease has expired
                time.sleep(1.0)

    event.listen(engine, "before_cursor_execute", slow_third_update)
    try:
        first = reap_expired(engine)
    finally:
        event.remove(engine, "before_cursor_execute", slow_third_update)
    assert len(updates) == 3
    assert first.requeued == first.failed == [] and get_run(engine, claim.run_id).status == "running"
    assert reap_expired(engine).failed == [claim.run_id]
    assert claim_runs(engine, "w2", 1, LEASE) == [] and get_run(engine, claim.run_id).attempt == 1


def test_reaping_twice_is_a_no_op(engine: Engine) -> None:
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, LEASE)
    expire(engine, claim.run_id)
    assert reap_expired(engine).requeued == [claim.run_id]
    again = reap_expired(engine)
    assert again.requeued == again.failed == again.cancelled == []


def test_heartbeat_extends_the_lease(engine: Engine) -> None:
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, 2.0)
    before = get_run(engine, claim.run_id).lease_expires_at
    time.sleep(0.05)
    assert heartbeat(engine, [claim], 60.0)[claim.run_id].held
    assert (get_run(engine, claim.run_id).lease_expires_at or 0) > (before or 0) + 50


def test_release_puts_the_run_back_without_costing_an_attempt(engine: Engine) -> None:
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, LEASE)
    assert release_run(engine, claim)
    run = get_run(engine, claim.run_id)
    assert run.status == "queued" and run.attempt == 0 and run.lease_token is None


def test_cancel_queued_running_and_finished(engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=3)
    first, second, third = (r.id for r in runs_of(engine, sweep.id))
    assert cancel_run(engine, first).status == "cancelled"
    assert cancel_run(engine, first).status == "cancelled"  # twice: same answer
    (claim,) = claim_runs(engine, "w", 1, LEASE)
    assert claim.run_id == second  # a cancelled run never starts
    answer = cancel_run(engine, second)
    assert answer.status == "running" and answer.cancel_requested
    assert record_epoch(engine, claim, 0, {"loss": 1.0}, None, LEASE) is WriteOutcome.CANCEL_REQUESTED
    assert heartbeat(engine, [claim], LEASE)[second].cancel_requested
    (claim3,) = claim_runs(engine, "w", 1, LEASE)
    finish_run(engine, claim3, RunStatus.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        cancel_run(engine, third)


def test_reaper_ends_a_cancelled_run_whose_worker_died(engine: Engine) -> None:
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, LEASE)
    cancel_run(engine, claim.run_id)
    expire(engine, claim.run_id)
    assert reap_expired(engine).cancelled == [claim.run_id]
    assert get_run(engine, claim.run_id).status == "cancelled"


def test_resumed_runs_pack_only_with_runs_at_the_same_epoch(engine: Engine) -> None:
    make_sweep(engine, replicates=3)
    (a, b, c) = claim_runs(engine, "w", 3, LEASE)
    record_epoch(engine, a, 0, {"loss": 1.0}, b"a0", LEASE)
    for claim in (a, b, c):
        release_run(engine, claim)
    first = claim_runs(engine, "w", 3, LEASE)
    assert [x.run_id for x in first] == [a.run_id] and first[0].last_epoch == 0
    second = claim_runs(engine, "w", 3, LEASE)
    assert [x.run_id for x in second] == [b.run_id, c.run_id] and second[0].last_epoch == -1


def test_release_of_a_run_with_a_pending_cancel_ends_it_cancelled(engine: Engine) -> None:
    """Queued again, the run would be claimed and train one more epoch before it ends cancelled."""
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, LEASE)
    cancel_run(engine, claim.run_id)
    assert release_run(engine, claim)
    run = get_run(engine, claim.run_id)
    assert run.status == "cancelled" and run.finished_at is not None
    assert events_of(engine, run.id) == ["claimed", "cancelled"]
    assert claim_runs(engine, "w2", 1, LEASE) == []


def test_a_crashed_pack_is_requeued_with_its_attempt_counted(engine: Engine) -> None:
    make_sweep(engine, replicates=2, max_attempts=2)
    first = claim_runs(engine, "w", 2, LEASE)
    assert [requeue_crashed(engine, c, "out of memory") for c in first] == [RunStatus.QUEUED] * 2
    assert [r.attempt for r in runs_of(engine, first[0].sweep_id)] == [1, 1]
    alone = claim_runs(engine, "w", 2, LEASE)
    assert len(alone) == 1 and alone[0].attempt == 2  # a run with attempts behind it trains alone
    assert requeue_crashed(engine, alone[0], "out of memory") is RunStatus.FAILED
    run = get_run(engine, alone[0].run_id)
    assert run.status == "failed" and run.error == "out of memory"
    assert requeue_crashed(engine, alone[0], "again") is None  # no longer held


def test_retried_writes_after_a_lost_commit_are_idempotent(engine: Engine) -> None:
    """A retry of a write whose commit went through (its answer lost) must answer as the first did."""
    make_sweep(engine)
    token = "a" * 32
    (claim,) = claim_runs(engine, "w", 1, LEASE, token)
    assert claims_with_token(engine, token) == [claim]
    assert claims_with_token(engine, "b" * 32) == []
    for _ in range(2):
        assert record_epoch(engine, claim, 0, {"loss": 1.0}, b"c0", LEASE, seconds=2.5) is WriteOutcome.OK
    assert get_run(engine, claim.run_id).train_seconds == 2.5
    assert finish_run(engine, claim, RunStatus.SUCCEEDED)
    assert finish_run(engine, claim, RunStatus.SUCCEEDED)  # its own finish: True again
    assert not finish_run(engine, claim, RunStatus.FAILED)
    assert events_of(engine, claim.run_id) == ["claimed", "succeeded"]
