"""Cancel against a claim committing at the same moment: a cancel the API answers with 200 is never
lost. Either the run never starts (cancelled before the claim) or the running run carries
cancel_requested, so its worker stops it within an epoch. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from app.services.queue import claim_runs, release_run
from app.services.runs import cancel_run
from app.services.sweeps import cancel_sweep
from tests.factories import get_run, make_sweep, runs_of

LEASE = 30.0


def _lock_waiters(engine: Engine) -> int:
    """PostgreSQL backends of this database waiting for a row lock (0 on SQLite, which has none)."""
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one())


@contextmanager
def cancel_before_claim_commits(engine: Engine, cancel: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """While the block claims, run CANCEL in another thread just before the claim's COMMIT, and let
    the claim commit only once the cancel is waiting on the claim's lock (PostgreSQL's row lock,
    SQLite's write lock) or has returned. The cancel's answer (or error) lands in the yielded dict."""
    claimer = threading.get_ident()
    outcome: dict[str, Any] = {}
    fired = threading.Event()

    def run_cancel() -> None:
        try:
            outcome["answer"] = cancel()
        except Exception as exc:  # the test reports it
            outcome["error"] = exc

    def before_commit(_conn: Any) -> None:
        if threading.get_ident() != claimer or fired.is_set():
            return
        fired.set()
        thread = threading.Thread(target=run_cancel)
        thread.start()
        outcome["thread"] = thread
        deadline = time.monotonic() + (10 if engine.dialect.name == "postgresql" else 0.5)
        while time.monotonic() < deadline and thread.is_alive() and not _lock_waiters(engine):
            time.sleep(0.02)
        outcome["cancel_waited"] = thread.is_alive()

    event.listen(engine, "commit", before_commit)
    try:
        yield outcome
    finally:
        event.remove(engine, "commit", before_commit)
        if "thread" in outcome:
            outcome["thread"].join(30)


def test_cancel_of_a_run_being_claimed_is_never_lost(engine: Engine) -> None:
    sweep = make_sweep(engine)
    run_id = runs_of(engine, sweep.id)[0].id
    with cancel_before_claim_commits(engine, lambda: cancel_run(engine, run_id)) as outcome:
        claims = claim_runs(engine, "w1", 1, LEASE)
    assert outcome["cancel_waited"], "the cancel did not wait on the claim: the interleaving was not forced"
    assert "error" not in outcome, outcome.get("error")
    assert [c.run_id for c in claims] == [run_id]  # the claim committed first
    answer, stored = outcome["answer"], get_run(engine, run_id)
    assert (answer.status, answer.cancel_requested) == ("running", True)
    assert (stored.status, stored.cancel_requested) == ("running", True)


def test_cancel_of_a_sweep_being_claimed_is_never_lost(engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=3)
    with cancel_before_claim_commits(engine, lambda: cancel_sweep(engine, sweep.id)) as outcome:
        claims = claim_runs(engine, "w1", 1, LEASE)
    assert outcome["cancel_waited"] and "error" not in outcome, outcome
    runs = {r.id: r for r in runs_of(engine, sweep.id)}
    claimed = claims[0].run_id
    assert (runs[claimed].status, runs[claimed].cancel_requested) == ("running", True)
    assert all(r.status == "cancelled" for i, r in runs.items() if i != claimed)
    assert outcome["answer"].status_counts.running == 1 and outcome["answer"].status_counts.cancelled == 2


@pytest.mark.parametrize("scope", ["run", "sweep"])
def test_cancel_of_a_run_going_back_to_the_queue_is_never_lost(engine: Engine, scope: str) -> None:
    """A worker releasing its run (SIGTERM) as the cancel lands: two statements, one for queued and
    one for running runs, each saw the run in the other state and the run trained again later."""
    sweep = make_sweep(engine, replicates=2)
    [claim] = claim_runs(engine, "w1", 1, LEASE)

    def cancel() -> Any:
        return cancel_run(engine, claim.run_id) if scope == "run" else cancel_sweep(engine, sweep.id)

    with cancel_before_claim_commits(engine, cancel) as outcome:
        assert release_run(engine, claim)
    assert outcome["cancel_waited"] and "error" not in outcome, outcome
    run = get_run(engine, claim.run_id)
    assert run.status == "cancelled", (run.status, run.cancel_requested)
    assert claim.run_id not in [c.run_id for c in claim_runs(engine, "w2", 2, LEASE)]  # it never trains again


def _never_lost(engine: Engine, run_id: int) -> None:
    run = get_run(engine, run_id)
    assert run.status == "cancelled" or (run.status == "running" and run.cancel_requested), \
        f"run {run_id} answered cancelled but is {run.status}, cancel_requested={run.cancel_requested}"


def race(*actions: Callable[[], Any]) -> list[BaseException]:
    """Run ACTIONS in threads released together by a barrier; the errors they raised."""
    barrier, errors = threading.Barrier(len(actions)), []

    def go(action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            action()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


ROUNDS = 25


def test_cancels_racing_claims_many_times(engine: Engine) -> None:
    """Each round: one claimer and one canceller released together at the same queued run."""
    sweep = make_sweep(engine, replicates=ROUNDS)
    for run in runs_of(engine, sweep.id):
        errors = race(lambda: claim_runs(engine, "w", 1, LEASE), lambda r=run.id: cancel_run(engine, r))
        assert errors == []
        _never_lost(engine, run.id)


def test_sweep_cancel_racing_claimers(engine: Engine) -> None:
    """Four claimers (three claims each) and a sweep cancel at once, five times."""
    for _ in range(5):
        sweep = make_sweep(engine, replicates=12)

        def claims() -> None:
            for _ in range(3):
                claim_runs(engine, "w", 1, LEASE)

        assert race(*[claims] * 4, lambda s=sweep.id: cancel_sweep(engine, s)) == []
        for run in runs_of(engine, sweep.id):
            _never_lost(engine, run.id)
