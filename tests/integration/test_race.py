"""A race (adaptive seeds, issue 13) through the real queue: the worker trains, the planner adds the
seeds the race asks for, the race's decisions match the rule computed here by hand; the verdicts and
decisions routes state them; a planner killed (SIGKILL) while it decides loses and duplicates nothing,
and planners asking at once add each seed once."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine, func, select

from app.config import PROJECT_ROOT, Settings
from app.db import read_session, write_session
from app.main import create_app
from app.models import Config, Run, RunStatus
from app.services.planner import plan
from app.services.pruning import prune_config
from app.services.queue import claim_runs, finish_run, record_epoch
from app.spec import TrainSpec
from tests.conftest import settings_env
from tests.factories import make_sweep, runs_of
from worker.fake_trainer import FakeTrainer
from worker.main import Worker
from worker.trainer import EpochMetrics, PreparedData, State

MEANS = {2: 0.30, 4: 0.895, 32: 0.90}  # width -> true mean final val_accuracy; 4 and 32 are close
SD = 0.02
RACE = {"replicates": {"min": 3, "max": 9, "step": 3}, "race": {"metric": "val_accuracy", "alpha": 0.05}}


def final(width: int, seed: int) -> float:
    return MEANS[width] + SD * float(np.random.default_rng([width, seed]).normal())


class WidthTrainer(FakeTrainer):
    """The fake trainer, its val_accuracy set by the config's width and the seed (`final`)."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData | None, states: list[State | None]):
        super().__init__(spec, seeds, data, states)
        self.width = spec.model.hidden[0] if spec.model.hidden else 0

    def _metrics(self, i: int) -> EpochMetrics:
        return {**super()._metrics(i), "val_accuracy": final(self.width, self.seeds[i])}


def spent(t: float, alpha: float = 0.05) -> float:
    """O'Brien-Fleming-type spending, written out here: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))."""
    return 2 - 2 * scipy_stats.norm.cdf(scipy_stats.norm.ppf(1 - alpha / 2) / math.sqrt(t))


def race_by_hand(widths: list[int], sizes: list[int], alpha: float = 0.05) -> tuple[dict[int, int], dict[int, int]]:
    """The race's rule computed from `final` directly: (seeds each width ends with, look each settled at)."""
    pairs = len(widths) * (len(widths) - 1) // 2
    levels = [spent(n / sizes[-1]) - (spent(m / sizes[-1]) if m else 0.0) for m, n in zip([0, *sizes], sizes,
                                                                                          strict=False)]
    racing, seeds, settled = list(widths), dict.fromkeys(widths, 0), {}
    for look, n in enumerate(sizes):
        data = {w: [final(w, s) for s in range(n)] for w in racing}
        for w in racing:
            seeds[w] = n
        out = []
        for w in racing:
            ahead = [o for o in racing if o != w and np.mean(data[o]) > np.mean(data[w])]
            ps = [scipy_stats.ttest_ind(data[w], data[o], equal_var=False).pvalue for o in ahead]
            if ps and min(ps) * pairs <= levels[look]:
                out.append(w)
                settled[w] = look
        racing = [w for w in racing if w not in out]
        if len(racing) <= 1:
            break
    return seeds, settled


def widths_of(engine: Engine, sweep_id: int) -> dict[int, int]:
    with read_session(engine) as s:
        return {i: t["model"]["hidden"][0] for i, t in s.execute(select(Config.id, Config.train)
                                                                  .where(Config.sweep_id == sweep_id))}


def test_a_race_through_the_queue_settles_as_the_rule_says(settings: Settings, engine: Engine) -> None:
    sweep = make_sweep(engine, name="race", epochs=2, grid={"model.hidden": [[2], [4], [32]]}, **RACE)
    assert len(runs_of(engine, sweep.id)) == 9  # min seeds each at submit
    Worker(settings, engine, factory=WidthTrainer).run(once=True)
    runs = runs_of(engine, sweep.id)
    width = widths_of(engine, sweep.id)
    counts = Counter(width[r.config_id] for r in runs)
    seeds, settled = race_by_hand([2, 4, 32], [3, 6, 9])
    assert dict(counts) == seeds and 9 <= len(runs) < 27
    assert settled == {2: 1}  # width 2 settles at the second look (6 seeds); 4 and 32 are too close to tell
    assert all(r.status == RunStatus.SUCCEEDED.value for r in runs)
    by_config = Counter((r.config_id, r.seed) for r in runs)
    assert max(by_config.values()) == 1  # every seed once
    assert all(sorted(r.seed for r in runs if r.config_id == c) == list(range(n))
               for c, n in Counter(r.config_id for r in runs).items())
    client = TestClient(create_app(settings))
    verdicts = client.get(f"/api/sweeps/{sweep.id}/verdicts?metric=val_accuracy").json()
    got = {width[c["config_id"]]: c["verdict"] for c in verdicts["comparisons"]}
    assert width[verdicts["best"]["config_id"]] == 32 and got == {2: "worse", 4: "indistinguishable"}
    close = next(c for c in verdicts["comparisons"] if width[c["config_id"]] == 4)
    assert close["p_holm"] < 0.05  # plain Holm on the final data would call it worse: the race did not settle it
    assert close["race"]["state"] == "unsettled"
    assert verdicts["race"]["applied"] and "O'Brien-Fleming" in verdicts["method"]
    narrow = next(c for c in verdicts["comparisons"] if width[c["config_id"]] == 2)
    assert narrow["race"]["state"] == "settled" and narrow["race"]["seeds"] == 6
    assert narrow["text"].startswith(f"{narrow['label']}: settled after 6 seeds: worse than")
    decisions = client.get(f"/api/sweeps/{sweep.id}/decisions").json()
    states = {width[c["config_id"]]: c["state"] for c in decisions["configs"]}
    assert states == {2: "settled", 4: "unsettled", 32: "best"}
    assert decisions["race"]["done"] and decisions["race"]["looks_done"] == 3
    assert decisions["race"]["sizes"] == [3, 6, 9] and sum(decisions["race"]["levels"]) == pytest.approx(0.05)
    # the adjusted p of the settled config, by hand: min p over those ahead x 3 pairs x alpha / the look's spend
    data = {w: [final(w, s) for s in range(6)] for w in (2, 4, 32)}
    p = min(scipy_stats.ttest_ind(data[2], data[o], equal_var=False).pvalue for o in (4, 32))
    row = next(c for c in decisions["configs"] if width[c["config_id"]] == 2)
    assert row["p_adjusted"] == pytest.approx(min(1.0, p * 3 * 0.05 / (spent(2 / 3) - spent(1 / 3))), rel=1e-6)
    assert row["text"].startswith("settled after 6 seeds: worse than ") and row["look"] == 2
    budget = client.get(f"/api/sweeps/{sweep.id}").json()["budget"]
    assert budget == {"model_epochs_used": 2 * len(runs), "model_epochs_fixed_design": 2 * 27}
    assert client.get("/api/sweeps/999999/decisions").status_code == 404
    plain = make_sweep(engine, name="plain", epochs=1, replicates=2)
    assert client.get(f"/api/sweeps/{plain.id}/decisions").json() == {"sweep_id": plain.id, "race": None,
                                                                        "prune": None, "configs": []}
    assert "race" not in client.get(f"/api/sweeps/{plain.id}/verdicts").json()


def settle_round(engine: Engine, sweep_id: int) -> None:
    """Train every queued run of the sweep by hand through the queue's calls (`final` as its result)."""
    width = widths_of(engine, sweep_id)
    while claims := claim_runs(engine, "by-hand", 50, 30.0):
        for c in claims:
            for epoch in range(c.last_epoch + 1, c.epochs + 1):
                record_epoch(engine, c, epoch, {"val_accuracy": final(width[c.config_id], c.seed)}, None, 30.0)
            finish_run(engine, c, RunStatus.SUCCEEDED)


def seeds_by_config(engine: Engine, sweep_id: int) -> dict[int, list[int]]:
    with read_session(engine) as s:
        rows = s.execute(select(Run.config_id, Run.seed).where(Run.sweep_id == sweep_id).order_by(Run.seed)).all()
    out: dict[int, list[int]] = {}
    for config_id, seed in rows:
        out.setdefault(config_id, []).append(seed)
    return out


HOLD_IN_PLAN = """
import sys, time
from app.config import Settings
from app.db import engine_for, write_session
from app.models import Sweep
from app.services.planner import plan_locked, stored_spec
engine = engine_for(Settings())
with write_session(engine) as s:
    spec = stored_spec(s.get(Sweep, int(sys.argv[1])))
    result = plan_locked(s, int(sys.argv[1]), spec)
    print("decided", result.new_runs, flush=True)
    time.sleep(120)  # killed here: decided, not committed
"""


def test_a_planner_killed_while_the_race_decides_loses_and_duplicates_nothing(
        settings: Settings, engine: Engine, tmp_path: Path) -> None:
    sweep = make_sweep(engine, name="kill", epochs=1, grid={"model.hidden": [[4], [32]]}, **RACE)
    settle_round(engine, sweep.id)  # the first round ended: the race asks for 3 more seeds each
    before = seeds_by_config(engine, sweep.id)
    child = subprocess.Popen([sys.executable, "-c", HOLD_IN_PLAN, str(sweep.id)], cwd=PROJECT_ROOT,
                             env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.strip() == "decided 6", (line, child.stderr.read() if child.stderr else "")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert seeds_by_config(engine, sweep.id) == before  # nothing half-made
    results: list[int] = []
    barrier = threading.Barrier(6)

    def ask() -> None:
        barrier.wait()
        results.append(plan(engine, sweep.id).new_runs)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 0, 0, 6]  # one planner adds the round, the others find it there
    assert all(seeds == list(range(6)) for seeds in seeds_by_config(engine, sweep.id).values())
    assert plan(engine, sweep.id).new_runs == 0  # the round has not ended: nothing more
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run).where(Run.sweep_id == sweep.id)) == 12


def test_a_race_with_configs_that_fail_or_are_pruned(settings: Settings, engine: Engine) -> None:
    """A pruned config leaves the race; runs that fail count as ended without a final."""
    sweep = make_sweep(engine, name="mixed", epochs=1, grid={"model.hidden": [[2], [4], [32]]}, **RACE)
    width = widths_of(engine, sweep.id)
    claims = claim_runs(engine, "by-hand", 50, 30.0)
    assert {width[c.config_id] for c in claims} == {2}
    for c in claims:  # width 2's runs all fail: it has no finals, so it is never settled; it gets more seeds
        finish_run(engine, c, RunStatus.FAILED, "boom")
    settle_round(engine, sweep.id)
    plan(engine, sweep.id)
    seeds = {width[c]: len(s) for c, s in seeds_by_config(engine, sweep.id).items()}
    assert seeds == {2: 6, 4: 6, 32: 6}
    two = next(c for c, w in width.items() if w == 2)
    with write_session(engine) as s:
        assert len(prune_config(s, two, "pruned at epoch 1: by the test", 1)) == 3  # its queued runs
    settle_round(engine, sweep.id)
    plan(engine, sweep.id)
    seeds = {width[c]: len(s) for c, s in seeds_by_config(engine, sweep.id).items()}
    assert seeds == {2: 6, 4: 9, 32: 9}  # pruned: out of the race
    data: dict[str, Any] = TestClient(create_app(settings)).get(f"/api/sweeps/{sweep.id}/decisions").json()
    states = {width[c["config_id"]]: c["state"] for c in data["configs"]}
    assert states[2] == "pruned"

