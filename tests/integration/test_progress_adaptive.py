"""`GET /api/sweeps/progress` and `Client.wait` across the gaps of adaptive sweeps: when every run so far
has ended but the planner will still add a race's next round or a search's next configs, the sweep is
not over (`more_to_come`), so `sweeplab submit --wait` does not stop in the gap; pruned runs are an
intended ending, not a failure."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, select, update

from app.db import read_session, write_session
from app.models import Config, Run, RunStatus
from app.services.planner import plan
from app.services.queue import claim_runs, finish_run, record_epoch
from app.services.sweeps import progress
from sweeplab.client import Client
from tests.conftest import LiveServer
from tests.factories import make_sweep
from tests.integration.test_race import RACE, final, settle_round, widths_of


def configs_of(engine: Engine, sweep_id: int) -> int:
    with read_session(engine) as s:
        return len(s.scalars(select(Config.id).where(Config.sweep_id == sweep_id)).all())


def train_claimed(engine: Engine, sweep_id: int) -> int:
    """One claim of what is queued now, trained by hand through the queue's calls and ended succeeded;
    answers how many runs it took. Runs planned meanwhile (the live server's timer plans too) stay
    queued, so the sweep is never finished behind the caller's back."""
    claims = claim_runs(engine, "by-hand", 50, 30.0)
    for c in claims:
        for epoch in range(c.last_epoch + 1, c.epochs + 1):
            record_epoch(engine, c, epoch, {"val_accuracy": 0.5 + 0.01 * c.seed}, None, 30.0)
        finish_run(engine, c, RunStatus.SUCCEEDED)
    return len(claims)


def train_all(engine: Engine, sweep_id: int) -> None:
    """Every queued run of the sweep trained by hand, claim after claim, until nothing is queued."""
    while train_claimed(engine, sweep_id):
        pass


def test_a_search_between_its_configs_has_more_to_come_until_max_configs(engine: Engine) -> None:
    sweep_id = make_sweep(engine, method="random", max_configs=4, replicates=2, search_seed=3,
                          search={"optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]}}).id
    first = configs_of(engine, sweep_id)
    assert 0 < first < 4
    answer = progress(engine, [sweep_id])
    assert not answer.total.more_to_come  # runs are queued: not a gap
    train_all(engine, sweep_id)
    gap = progress(engine, [sweep_id])
    assert gap.total.ended == gap.total.runs == 2 * first
    assert gap.sweeps[0].more_to_come and gap.total.more_to_come, "the search will draw more configs"
    while plan(engine, sweep_id).changed:
        train_all(engine, sweep_id)
    assert configs_of(engine, sweep_id) == 4
    done = progress(engine, [sweep_id])
    assert done.total.ended == done.total.runs == 8 and not done.total.more_to_come


def test_a_race_between_rounds_has_more_to_come_and_a_cancel_ends_it(engine: Engine) -> None:
    sweep_id = make_sweep(engine, grid={"model.hidden": [[4], [32]]}, **RACE).id
    settle_round(engine, sweep_id)  # first round: 3 seeds each, widths 4 and 32 too close to settle
    gap = progress(engine, [sweep_id]).total
    assert gap.ended == gap.runs == 6 and gap.more_to_come
    assert plan(engine, sweep_id).changed  # what the gap promised, the planner adds
    assert not progress(engine, [sweep_id]).total.more_to_come  # queued again
    with write_session(engine) as s:  # a cancel stops a sweep: nothing more is planned for it
        s.execute(update(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.QUEUED.value)
                  .values(status=RunStatus.CANCELLED.value))
    stopped = progress(engine, [sweep_id]).total
    assert stopped.ended == stopped.runs and not stopped.more_to_come
    assert final(4, 0) != final(32, 0) and set(widths_of(engine, sweep_id).values()) == {4, 32}


def test_wait_goes_on_through_the_gap_and_counts_pruned_runs_as_ended_well(live_server: LiveServer,
                                                                           engine: Engine) -> None:
    """The real client against the real server: a search whose runs end while the planner has not yet
    drawn its next configs (no worker: the test trains by hand; the server's timer may plan too) is
    waited for to the end; a pruned run does not make wait answer False."""
    sweep_id = make_sweep(engine, method="random", max_configs=3, replicates=1, search_seed=1,
                          search={"optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]}}).id
    assert configs_of(engine, sweep_id) < 3
    train_claimed(engine, sweep_id)  # the gap (or a config the timer planned meanwhile, queued)
    result: dict[str, Any] = {}
    with Client(live_server.url) as client:
        waiter = threading.Thread(target=lambda: result.setdefault("ok", client.wait(sweep_id, poll=0.1,
                                                                                      progress=False, timeout=60)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), "wait returned in the gap between a search's configs"
        for _ in range(20):  # the test and the server's timer plan; whoever does, the test trains
            plan(engine, sweep_id)
            train_all(engine, sweep_id)
            if configs_of(engine, sweep_id) == 3 and not progress(engine, [sweep_id]).total.more_to_come:
                break
        waiter.join(30)
        assert not waiter.is_alive() and result["ok"] is True
        with write_session(engine) as s:  # one run pruned: an intended ending
            run_id = s.scalars(select(Run.id).where(Run.sweep_id == sweep_id)).first()
            s.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.PRUNED.value))
        assert client.wait(sweep_id, poll=0.1, progress=False, timeout=10) is True
        with write_session(engine) as s:
            s.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.FAILED.value))
        assert client.wait(sweep_id, poll=0.1, progress=False, timeout=10) is False
