"""Random and TPE search through the real queue (issue 13): configs made as work frees up, reproducible
from search_seed, exactly once whatever number of planners ask at once (threads, processes), nothing
half-made by a planner killed mid-plan; the budget and the search-progress answers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from app.config import PROJECT_ROOT, Settings
from app.db import read_session
from app.main import create_app
from app.metrics import VAL_ACCURACY
from app.models import Config, Run, RunStatus
from app.services import workers
from app.services.planner import SEARCH_HEADROOM, plan, plan_pending
from app.services.queue import claim_runs, finish_run, record_epoch, release_run
from app.services.search import random_params, startup_trials
from app.services.sweeps import cancel_sweep, parse_spec, retry_failed
from app.spec import SweepSpec, TrainSpec, describe_params
from tests.conftest import start_worker, wait_for
from tests.factories import make_sweep
from worker.main import Worker

LR = {"optimizer.learning_rate": {"loguniform": [0.0001, 0.1]}}
BEST_LOG_LR = -2.5


def score(train: TrainSpec, seed: int = 0) -> float:
    """The test's objective: val_accuracy peaks at learning rate 10**-2.5 (a parabola in log10 lr)."""
    lr = train.optimizer.learning_rate or 0.001
    return 1.0 - (math.log10(lr) - BEST_LOG_LR) ** 2 / 10.0


def search(engine: Engine, name: str = "search", **spec: Any) -> int:
    data = {"method": "random", "search": LR, "max_configs": 6, "search_seed": 7, "replicates": 1, "epochs": 1,
            **spec}
    return make_sweep(engine, name=name, **data).id


def train_pack(engine: Engine, value: Callable[[TrainSpec, int], float] = score) -> bool:
    """Claim the oldest pack and train its oldest config by hand through the queue's own calls, so
    that one config ends per call (the other configs of a mixed pack, app/packing.py, go back to
    the queue); False if none is queued."""
    claims = claim_runs(engine, "by-hand", 50, 30.0)
    if not claims:
        return False
    for c in claims:
        if c.config_id != claims[0].config_id:
            assert release_run(engine, c)
            continue
        train = TrainSpec.model_validate(c.train)
        for epoch in range(c.last_epoch + 1, c.epochs + 1):
            record_epoch(engine, c, epoch, {VAL_ACCURACY: value(train, c.seed)}, None, 30.0)
        assert finish_run(engine, c, RunStatus.SUCCEEDED)
    return True


def configs_of(engine: Engine, sweep_id: int) -> list[Config]:
    with read_session(engine) as s:
        return list(s.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)))


def lrs(engine: Engine, sweep_id: int) -> list[float]:
    return [c.train["optimizer"]["learning_rate"] for c in configs_of(engine, sweep_id)]


def runs_by_config(engine: Engine, sweep_id: int) -> dict[int, list[int]]:
    with read_session(engine) as s:
        rows = s.execute(select(Run.config_id, Run.seed).where(Run.sweep_id == sweep_id).order_by(Run.id)).all()
    out: dict[int, list[int]] = {}
    for config_id, seed in rows:
        out.setdefault(config_id, []).append(seed)
    return out


def check_whole(engine: Engine, sweep_id: int, spec: SweepSpec, n: int) -> None:
    """N configs at positions 0..N-1, distinct, exactly the random sequence, each with its seeds once."""
    configs = configs_of(engine, sweep_id)
    assert [c.position for c in configs] == list(range(n))
    assert len({c.key for c in configs}) == n
    assert [c.params for c in configs] == [random_params(spec, k) for k in range(n)]
    seeds = runs_by_config(engine, sweep_id)
    assert sorted(seeds) == sorted(c.id for c in configs)
    assert all(sorted(v) == spec.seed_list() for v in seeds.values())


def spec_of(engine: Engine, sweep_id: int) -> SweepSpec:
    with read_session(engine) as s:
        from app.models import Sweep

        sweep = s.get(Sweep, sweep_id)
        assert sweep is not None
        return parse_spec(sweep.spec)


def test_configs_are_made_as_work_frees_up_and_apply_like_grid_values(engine: Engine) -> None:
    sweep_id = search(engine, max_configs=9, replicates=2,
                      search={**LR, "model.hidden": {"choice": [[4], [8]]}, "epochs": {"int": [1, 3]}})
    spec = spec_of(engine, sweep_id)
    assert len(configs_of(engine, sweep_id)) == SEARCH_HEADROOM  # no worker yet: never all at the start
    assert not plan(engine, sweep_id).changed  # in flight already: nothing more
    for i in range(3):
        workers.beat(engine, f"w{i}", "host", i, [], 60.0)
    assert plan(engine, sweep_id).new_configs and len(configs_of(engine, sweep_id)) == 3 + SEARCH_HEADROOM
    assert not plan(engine, sweep_id).changed
    assert train_pack(engine)  # one config's two runs end: room for one more
    result = plan(engine, sweep_id)
    assert len(result.new_configs) == 1 and result.new_runs == 2
    while train_pack(engine):
        plan(engine, sweep_id)
    check_whole(engine, sweep_id, spec, 9)
    for c in configs_of(engine, sweep_id):
        # The dotted-path values applied into the stored config, as a grid's are; label and params alike.
        assert c.train["optimizer"]["learning_rate"] == c.params["optimizer.learning_rate"]
        assert c.train["model"]["hidden"] == c.params["model.hidden"] and c.train["epochs"] == c.params["epochs"]
        assert c.label == describe_params(c.params) and c.key == spec.config_for(c.params).key
        assert TrainSpec.model_validate(c.train).model_dump(mode="json") == c.train
    with read_session(engine) as s:
        epochs = dict(s.execute(select(Run.config_id, func.max(Run.epochs)).group_by(Run.config_id)).all())
    assert all(epochs[c.id] == c.params["epochs"] for c in configs_of(engine, sweep_id))
    assert not plan(engine, sweep_id).changed and plan_pending(engine) == []  # max_configs reached


def test_random_search_is_the_same_whatever_the_timing(engine: Engine, settings: Settings) -> None:
    """One sweep trained by a worker (capacity 3), one by hand with nobody registered (capacity 2)
    and planned by eight threads at once each round: the same configs, by position."""
    by_worker = search(engine, "by worker", max_configs=7)
    Worker(settings, engine).run(once=True)
    by_hand = search(engine, "by hand", max_configs=7)
    rounds = 0
    while train_pack(engine):
        rounds += 1
        barrier = threading.Barrier(8)

        def planner(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            plan(engine, by_hand)

        threads = [threading.Thread(target=planner) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    spec = spec_of(engine, by_hand)
    check_whole(engine, by_worker, spec, 7)
    check_whole(engine, by_hand, spec, 7)
    assert lrs(engine, by_worker) == lrs(engine, by_hand) and rounds == 7
    assert all(1e-4 <= v <= 0.1 for v in lrs(engine, by_hand)) and len(set(lrs(engine, by_hand))) == 7
    other = search(engine, "other seed", max_configs=7, search_seed=8)
    assert lrs(engine, other) != lrs(engine, by_hand)[:2]


def test_concurrent_planners_make_each_config_exactly_once(engine: Engine) -> None:
    """Twelve threads, each with its own sessions, plan at once after every round of finished work:
    the sweep holds exactly the configs it should, never more than the room, no duplicate."""
    for i in range(4):
        workers.beat(engine, f"w{i}", "host", i, [], 60.0)
    room = 4 + SEARCH_HEADROOM
    sweep_id = search(engine, max_configs=24, replicates=3)
    spec = spec_of(engine, sweep_id)
    finished = 0
    while True:
        before = len(configs_of(engine, sweep_id))
        barrier = threading.Barrier(12)
        results: list[int] = []
        errors: list[BaseException] = []

        def planner(barrier: threading.Barrier = barrier, results: list[int] = results,
                    errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                results.append(len(plan(engine, sweep_id).new_configs))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=planner) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        expected = min(24, finished + room)
        assert len(configs_of(engine, sweep_id)) == expected and sum(results) == expected - before
        check_whole(engine, sweep_id, spec, expected)
        if not train_pack(engine):
            break
        finished += 1
        if finished % 3 == 0:  # sometimes two configs end between plans
            finished += train_pack(engine)
    assert finished == 24


PLANNER_SCRIPT = """
import sys, time
from app.db import make_engine
from app.services.planner import plan
engine = make_engine(sys.argv[1])
start, sweep_id = float(sys.argv[2]), int(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
deadline = time.time() + 60
while time.time() < deadline:
    plan(engine, sweep_id)
    time.sleep(0.005)
"""


def test_two_processes_plan_at_once(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    """Two planner processes call plan() in a loop while this one finishes work: every config once."""
    sweep_id = search(engine, max_configs=12, replicates=2)
    spec = spec_of(engine, sweep_id)
    start = time.time() + 3.0  # both started and connected by then
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", PLANNER_SCRIPT, settings.database_url, str(start),
                               str(sweep_id)], cwd=PROJECT_ROOT, env=env) for _ in range(2)]
    try:
        time.sleep(max(0.0, start - time.time()))
        deadline = time.monotonic() + 50
        while train_pack(engine) or len(configs_of(engine, sweep_id)) < 12:
            assert time.monotonic() < deadline, "the planner processes did not make the configs"
            time.sleep(0.02)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    check_whole(engine, sweep_id, spec, 12)


KILLED_PLANNER = """
import os, sys
import app.services.planner as planner
from app.db import make_engine
real = planner._add_runs
def add_then_die(*args, **kwargs):
    n = real(*args, **kwargs)
    session = args[0]
    session.flush()
    os.kill(os.getpid(), 9)  # SIGKILL with a config and its runs written but not committed
    return n
planner._add_runs = add_then_die
planner.plan(make_engine(sys.argv[1]), int(sys.argv[2]))
"""


def test_a_planner_killed_mid_plan_leaves_nothing_half_made(engine: Engine, settings: Settings) -> None:
    sweep_id = search(engine, max_configs=6, replicates=3)
    spec = spec_of(engine, sweep_id)
    assert train_pack(engine) and train_pack(engine)  # both first configs done: room for two more
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_PLANNER, settings.database_url, str(sweep_id)],
                          cwd=PROJECT_ROOT, env=env, timeout=60)
    assert done.returncode == -9
    assert len(configs_of(engine, sweep_id)) == 2
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run).where(Run.sweep_id == sweep_id)) == 6
    assert len(plan(engine, sweep_id).new_configs) == 2  # the lock is free again; the same two come
    check_whole(engine, sweep_id, spec, 4)


def test_a_cancelled_search_gets_no_more_configs_until_retried(engine: Engine) -> None:
    sweep_id = search(engine, max_configs=6)
    (held,) = claim_runs(engine, "w", 1, 30.0)
    cancel_sweep(engine, sweep_id)  # config 0 asked to stop, config 1 cancelled while queued
    assert finish_run(engine, held, RunStatus.SUCCEEDED)  # its last epoch was in: it ends succeeded
    assert not plan(engine, sweep_id).changed and plan_pending(engine) == []
    retry_failed(engine, sweep_id)  # config 1's run queued again
    assert train_pack(engine) and not train_pack(engine)
    assert len(plan(engine, sweep_id).new_configs) == 2 and len(configs_of(engine, sweep_id)) == 4


def tpe_ask(spec: SweepSpec, k: int, complete: list[float], running: list[float]) -> float:
    """What Optuna's TPESampler asks for config K, told COMPLETE learning rates (valued by `score`) and
    RUNNING ones, computed here with Optuna directly."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    dist = {"optimizer.learning_rate": FloatDistribution(0.0001, 0.1, log=True)}
    seed = int(np.random.SeedSequence([spec.search_seed or 0, k]).generate_state(1)[0])
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec), constant_liar=True)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for lr in complete:
        study.add_trial(create_trial(params={"optimizer.learning_rate": lr}, distributions=dist,
                                     value=1.0 - (math.log10(lr) - BEST_LOG_LR) ** 2 / 10.0))
    for lr in running:
        study.add_trial(create_trial(state=TrialState.RUNNING, params={"optimizer.learning_rate": lr},
                                     distributions=dist))
    return float(study.ask(dist).params["optimizer.learning_rate"])


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tpe_asks_optuna_with_every_finished_config_and_learns(engine: Engine) -> None:
    """One config at a time in flight beyond the one just made: each TPE config is what Optuna asks
    when told every finished config's mean final metric (read back from the runs) and the running one;
    after the random start its configs crowd the optimum."""
    sweep_id = search(engine, method="tpe", max_configs=16, search_seed=5, replicates=2)
    spec = spec_of(engine, sweep_id)
    while train_pack(engine):
        plan(engine, sweep_id)
    got = lrs(engine, sweep_id)
    assert len(got) == 16 and len(set(got)) == 16
    for k in range(2, 16):  # config k was made when 0..k-2 had ended and k-1 was in flight
        assert got[k] == pytest.approx(tpe_ask(spec, k, got[:k - 1], [got[k - 1]]), rel=1e-12), k
    start = startup_trials(spec)
    miss = [abs(math.log10(v) - BEST_LOG_LR) for v in got]
    assert np.mean(miss[start:]) < np.mean(miss[:start])
    # The same seed, other timing (five in flight at once): the same random first configs.
    for i in range(3):
        workers.beat(engine, f"w{i}", "host", i, [], 60.0)
    again = search(engine, "again", method="tpe", max_configs=16, search_seed=5, replicates=2)
    while train_pack(engine):
        plan(engine, again)
    assert lrs(engine, again)[:start] == got[:start]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tpe_through_real_worker_processes(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    """Two `sweeplab worker` processes at once on a TPE sweep: every config once, all distinct, all
    trained, each with its two seeds once."""
    sweep_id = search(engine, method="tpe", max_configs=8, search_seed=3, replicates=2,
                      search={**LR, "model.hidden": {"choice": [[8], [32]]}})
    procs = [start_worker(settings, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        def done() -> bool:
            with read_session(engine) as s:
                n = s.scalar(select(func.count()).select_from(Run).where(
                    Run.sweep_id == sweep_id, Run.status == RunStatus.SUCCEEDED.value))
            return n == 16

        wait_for(done, 90, 0.3, "the TPE sweep to finish")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
    configs = configs_of(engine, sweep_id)
    assert [c.position for c in configs] == list(range(8)) and len({c.key for c in configs}) == 8
    assert all(sorted(v) == [0, 1] for v in runs_by_config(engine, sweep_id).values())


def test_budget_search_progress_and_validate_through_the_api(settings: Settings, engine: Engine) -> None:
    small = settings.model_copy(update={"max_runs_per_sweep": 20})
    with TestClient(create_app(small), raise_server_exceptions=False) as api:
        grid = api.post("/api/sweeps", json={"name": "g", "epochs": 2, "model": {"hidden": [4]}, "replicates": 3,
                                             "grid": {"model.hidden": [[4], [8]]}}).json()
        assert grid["budget"] == {"model_epochs_used": 0, "model_epochs_fixed_design": 12}
        body = {"name": "s", "method": "random", "search": LR, "max_configs": 4, "search_seed": 1, "replicates": 2,
                "epochs": 3}
        answer = api.post("/api/sweeps/validate", json=body).json()
        assert (answer["configs"], answer["replicates"], answer["runs"]) == (4, 2, 8)
        made = api.post("/api/sweeps", json=body)
        assert made.status_code == 201 and made.json()["configs"] == SEARCH_HEADROOM
        too_many = api.post("/api/sweeps", json={**body, "max_configs": 11})
        assert too_many.status_code == 422
        assert too_many.json()["error"]["fields"][0]["loc"] == "max_configs"
        assert api.post("/api/sweeps/validate", json={**body, "max_configs": 11}).status_code == 422
        sweep_id = made.json()["id"]
        while train_pack(engine, lambda train, seed: score(train) + seed / 100):
            plan(engine, sweep_id)
        got = api.get(f"/api/sweeps/{sweep_id}").json()
        assert got["budget"] == {"model_epochs_used": 4 * 2 * 3, "model_epochs_fixed_design": 4 * 2 * 3}
        assert got["status_counts"]["succeeded"] == 8 and got["configs"] == 4
        listed = {s["id"]: s for s in api.get("/api/sweeps").json()}
        assert listed[sweep_id]["budget"] == got["budget"]  # train_pack trained the grid's runs first
        assert listed[grid["id"]]["budget"] == {"model_epochs_used": 12, "model_epochs_fixed_design": 12}
        progress = api.get(f"/api/sweeps/{sweep_id}/search-progress").json()
        configs = api.get(f"/api/sweeps/{sweep_id}/configs").json()
        means = [((score(TrainSpec.model_validate(c["config"])) + 0 / 100)
                  + (score(TrainSpec.model_validate(c["config"])) + 1 / 100)) / 2 for c in configs]
        assert progress["metric"] == VAL_ACCURACY and progress["positions"] == [0, 1, 2, 3]
        assert progress["values"] == pytest.approx(means) and progress["n"] == [2, 2, 2, 2]
        assert progress["best_so_far"] == pytest.approx([max(means[:i + 1]) for i in range(4)])
        assert progress["best_position"][-1] == int(np.argmax(means))
        assert api.get("/api/sweeps/999/search-progress").status_code == 404
        assert api.get(f"/api/sweeps/{sweep_id}/search-progress?metric=").status_code == 422


def test_a_raced_search_adds_each_seed_once_with_concurrent_planners(engine: Engine) -> None:
    """A random search whose configs race for seeds (2 to 6, step 2): eight planners at once after
    every pack add each new config and each new seed once, seeds 0..n-1 per config, never past max."""
    sweep_id = search(engine, max_configs=5, replicates={"min": 2, "max": 6, "step": 2},
                      race={"metric": VAL_ACCURACY, "alpha": 0.05})
    spec = spec_of(engine, sweep_id)
    rng = np.random.default_rng(0)
    noise = {seed: float(rng.normal(0, 0.002)) for seed in range(6)}
    while train_pack(engine, lambda train, seed: score(train) + noise[seed]):
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def planner(barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                plan(engine, sweep_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=planner) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for seeds in runs_by_config(engine, sweep_id).values():
            assert seeds == list(range(len(seeds))) and len(seeds) in (2, 4, 6)
    configs = configs_of(engine, sweep_id)
    assert [c.params for c in configs] == [random_params(spec, k) for k in range(5)]
    seeds = runs_by_config(engine, sweep_id)
    assert sum(map(len, seeds.values())) < 5 * 6  # some config settled before max
    assert not plan(engine, sweep_id).changed
