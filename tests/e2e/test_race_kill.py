"""A race through `sweeplab worker` processes that a killer SIGKILLs and restarts (issue 13): the
workers' planners add each round's seeds once whatever dies in between, every run ends once, every
epoch's metrics are stored once. The fake trainer's configs are equal, so the race runs each to max."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from typing import Any

from sqlalchemy import Engine, select

from app.config import Settings
from app.db import read_session
from app.models import Run
from tests.conftest import wait_for
from tests.e2e.test_crash import (  # noqa: F401  (fixtures)
    all_final,
    check_exactly_once,
    crash_engine,
    crash_settings,
    fleet_factory,
    submit,
)

RACE = {"replicates": {"min": 2, "max": 6, "step": 2}, "race": {"metric": "val_accuracy", "alpha": 0.05}}


def test_a_race_survives_sigkilled_workers(crash_settings: Settings, crash_engine: Engine,  # noqa: F811
                                           fleet_factory: Any) -> None:  # noqa: F811
    # About ten kills among twelve short runs: on a slow machine one run can be killed mid-run three
    # times, which the queue rightly ends `failed` (max_attempts). The attempt limit is not what this
    # test is about (test_crash.py tests it), so runs here may be claimed as often as the kills need.
    settings = crash_settings.model_copy(update={"max_attempts": 50})
    sweep_id = submit(crash_engine, settings, name="race under fire", epochs=4, model={"hidden": [4]},
                      grid={"model.hidden": [[4], [8]]}, **RACE)
    fleet = fleet_factory(3, settings=settings, SWEEPLAB_FAKE_EPOCH_SECONDS="0.15")
    rng = random.Random(13)
    kills, deadline = 0, time.monotonic() + 12
    while time.monotonic() < deadline and not all_final(crash_engine, [sweep_id]):
        time.sleep(rng.uniform(0.5, 1.5))
        slot = rng.randrange(len(fleet.procs))
        if fleet.procs[slot].poll() is None:
            fleet.procs[slot].send_signal(signal.SIGKILL)
            fleet.procs[slot].wait()
            kills += 1
        fleet.restart_dead()
    def rows() -> list[Any]:  # a short read each time: a connection held open would hold SQLite's write lock
        with read_session(crash_engine) as s:
            return list(s.execute(select(Run.config_id, Run.seed).where(Run.sweep_id == sweep_id)).all())

    wait_for(lambda: len(rows()) == 12 and all_final(crash_engine, [sweep_id]), 120, 0.5,
             "the race to give both configs 6 seeds and end")
    seeds = [tuple(r) for r in rows()]
    assert kills >= 3
    assert max(Counter(seeds).values()) == 1  # no seed twice
    per_config: dict[int, list[int]] = {}
    for config_id, seed in seeds:
        per_config.setdefault(config_id, []).append(seed)
    assert sorted(map(sorted, per_config.values())) == [list(range(6))] * 2
    figures = check_exactly_once(crash_engine, [sweep_id])
    assert figures["runs"] == 12, (figures, fleet.log_text()[-3000:])
