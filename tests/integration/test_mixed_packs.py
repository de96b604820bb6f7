"""Mixed packs on a real database: runs whose configs differ only in learning rate and epochs (the
pack key, app/packing.py) are claimed as one pack across configs and sweeps, and the worker trains
them together, each with its own rate, each ending at its own last epoch."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, select, update

from app.config import Settings
from app.db import read_session, write_session
from app.models import Config, Run
from app.packing import pack_key_of
from app.services.queue import Claim, claim_runs, claims_with_token, record_epoch, release_run, requeue_crashed
from app.spec import TrainSpec
from tests.conftest import wait_for
from tests.factories import get_run, make_sweep, metric_rows, runs_of
from worker.fake_trainer import FakeTrainer
from worker.main import Worker
from worker.trainer import PreparedData, State

LEASE = 30.0
MODEL = {"model": {"hidden": [4]}, "optimizer": {"name": "adam", "learning_rate": 0.01}}


def configs_of(engine: Engine, sweep_id: int) -> list[Config]:
    with read_session(engine) as s:
        return list(s.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)))


def study(engine: Engine, replicates: int = 2) -> dict[str, Any]:
    """q1 and q2 of a study (one config at 2 and 4 epochs, two sweeps), a grid over the learning
    rate of the same model, and a sweep of another width (another pack key), in that order."""
    return {"q1": make_sweep(engine, name="q1", replicates=replicates, epochs=2, **MODEL),
            "q2": make_sweep(engine, name="q2", replicates=replicates, epochs=4, **MODEL),
            "lr": make_sweep(engine, name="lr", replicates=1, epochs=3, **MODEL,
                             grid={"optimizer.learning_rate": [0.003, 0.03]}),
            "wide": make_sweep(engine, name="wide", replicates=2, epochs=2, **{**MODEL, "model": {"hidden": [8]}})}


def run_ids(engine: Engine, *sweeps: Any) -> list[int]:
    return [r.id for sweep in sweeps for r in runs_of(engine, sweep.id)]


# ---- the claim

def test_sweeps_store_one_pack_key_for_configs_that_differ_in_rate_or_epochs(engine: Engine) -> None:
    made = study(engine)
    keys = {name: {c.pack_key for c in configs_of(engine, sweep.id)} for name, sweep in made.items()}
    assert keys["q1"] == keys["q2"] == keys["lr"] and len(keys["q1"]) == 1
    assert keys["wide"] != keys["q1"] and len(keys["wide"]) == 1
    for sweep in made.values():
        for config in configs_of(engine, sweep.id):
            assert config.pack_key == pack_key_of(config.train)
        for run in runs_of(engine, sweep.id):  # each run carries its config's key: the claim reads runs only
            assert run.pack_key == next(c.pack_key for c in configs_of(engine, sweep.id) if c.id == run.config_id)


def test_one_claim_packs_runs_of_one_pack_key_across_configs_and_sweeps(engine: Engine) -> None:
    made = study(engine)
    mixed = claim_runs(engine, "w1", 10, LEASE)
    assert [c.run_id for c in mixed] == run_ids(engine, made["q1"], made["q2"], made["lr"])
    assert len({c.config_id for c in mixed}) == 4 and len({c.sweep_id for c in mixed}) == 3
    # Each claim carries its own config's settings: its own rate and epochs.
    configs = {c.id: c for name in ("q1", "q2", "lr") for c in configs_of(engine, made[name].id)}
    for claim in mixed:
        assert claim.train == configs[claim.config_id].train
        assert claim.epochs == claim.train["epochs"] == {made["q1"].id: 2, made["q2"].id: 4}.get(claim.sweep_id, 3)
    assert sorted({c.train["optimizer"]["learning_rate"] for c in mixed}) == [0.003, 0.01, 0.03]
    assert claims_with_token(engine, mixed[0].token) == mixed  # a retried claim finds the same, settings and all
    other = claim_runs(engine, "w2", 10, LEASE)
    assert [c.run_id for c in other] == run_ids(engine, made["wide"])
    assert claim_runs(engine, "w3", 10, LEASE) == []


def test_a_mixed_pack_takes_the_oldest_runs_up_to_the_pack_size(engine: Engine) -> None:
    made = study(engine)
    order = run_ids(engine, made["q1"], made["q2"], made["lr"])
    assert [c.run_id for c in claim_runs(engine, "w", 3, LEASE)] == order[:3]
    assert [c.run_id for c in claim_runs(engine, "w", 2, LEASE)] == order[3:5]
    assert [c.run_id for c in claim_runs(engine, "w", 3, LEASE)] == order[5:]  # the rest of the key


def test_runs_pack_only_at_the_same_epoch_and_crashed_ones_alone(engine: Engine) -> None:
    made = study(engine)
    q1a, q1b, q2a, q2b, lr1, lr2 = claim_runs(engine, "w", 10, LEASE)
    record_epoch(engine, q1a, 0, {"loss": 1.0}, b"c", LEASE)
    record_epoch(engine, q2a, 0, {"loss": 1.0}, b"c", LEASE)
    for claim in (q1a, q2a, q1b, q2b, lr2):
        release_run(engine, claim)  # back to the queue, attempt given back
    requeue_crashed(engine, lr1, "out of memory")  # its attempt counts: it trains alone
    resumed = claim_runs(engine, "w", 10, LEASE)
    assert [c.run_id for c in resumed] == [q1a.run_id, q2a.run_id] and {c.last_epoch for c in resumed} == {0}
    fresh = claim_runs(engine, "w", 10, LEASE)
    assert [c.run_id for c in fresh] == [q1b.run_id, q2b.run_id, lr2.run_id]  # not lr1: attempt 1
    assert [c.run_id for c in claim_runs(engine, "w", 10, LEASE)] == [lr1.run_id]
    assert [c.run_id for c in claim_runs(engine, "w", 10, LEASE)] == run_ids(engine, made["wide"])


def test_runs_without_a_pack_key_pack_only_with_their_config(engine: Engine) -> None:
    """Runs whose key is missing (rows written without one) fall back to one config per pack."""
    made = study(engine)
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == made["q1"].id).values(pack_key=None))
    assert [c.run_id for c in claim_runs(engine, "w", 10, LEASE)] == run_ids(engine, made["q1"])
    assert [c.run_id for c in claim_runs(engine, "w", 10, LEASE)] == run_ids(engine, made["q2"], made["lr"])


def test_concurrent_claimers_take_every_run_of_a_mixed_queue_once(engine: Engine) -> None:
    """Eight claimers at once on 3 x 12 runs of one pack key and 12 of another: every run claimed
    exactly once, every claim one pack key at one epoch, none larger than the pack size."""
    sweeps = [make_sweep(engine, replicates=12, epochs=e, **MODEL) for e in (1, 2, 3)]
    sweeps.append(make_sweep(engine, replicates=12, epochs=2, model={"hidden": [8]}))
    configs = {c.id: c.pack_key for sweep in sweeps for c in configs_of(engine, sweep.id)}
    claims: list[list[Claim]] = []
    lock, barrier = threading.Lock(), threading.Barrier(8)

    def claimer(i: int) -> None:
        barrier.wait()
        while got := claim_runs(engine, f"w{i}", 5, LEASE):
            with lock:
                claims.append(got)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = sorted(c.run_id for pack in claims for c in pack)
    assert ids == sorted(run_ids(engine, *sweeps))
    for pack in claims:
        assert 1 <= len(pack) <= 5 and len({configs[c.config_id] for c in pack}) == 1
        assert len({c.token for c in pack}) == 1
    assert {r.status for sweep in sweeps for r in runs_of(engine, sweep.id)} == {"running"}


# ---- the worker

class _RecordsRates(FakeTrainer):
    """The fake trainer, noting the learning rates each pack was built with."""

    built: ClassVar[list[tuple[list[int], list[float] | None]]] = []

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData | None, states: list[State | None],
                 learning_rates: list[float] | None = None):
        super().__init__(spec, seeds, data, states, learning_rates)
        self.built.append((list(seeds), learning_rates))


def test_each_run_of_a_mixed_pack_ends_at_its_own_epoch(settings: Settings, engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """q1's runs end succeeded after their 2 epochs while q2's train on to 4 in the same pack; the
    trainer got each run's own learning rate; runs of one rate get none (the spec's)."""
    monkeypatch.setenv("SWEEPLAB_FAKE_EPOCH_SECONDS", "0.5")
    made = study(engine)
    _RecordsRates.built = []
    worker = Worker(settings.model_copy(update={"pack_size": 10}), engine, factory=_RecordsRates)
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    thread.start()
    try:
        q1, q2 = runs_of(engine, made["q1"].id), runs_of(engine, made["q2"].id)
        wait_for(lambda: all(get_run(engine, r.id).status == "succeeded" for r in q1), 20, 0.05, "q1 done")
        assert [get_run(engine, r.id).status for r in q2] == ["running"] * 2  # the pack goes on without q1
        assert all(get_run(engine, r.id).last_epoch < 4 for r in q2)
    finally:
        thread.join(30)
    assert not thread.is_alive()
    assert [(len(seeds), rates) for seeds, rates in _RecordsRates.built] == [
        (6, [0.01, 0.01, 0.01, 0.01, 0.003, 0.03]), (2, None)]
    for name, epochs in (("q1", 2), ("q2", 4), ("lr", 3), ("wide", 2)):
        for run in runs_of(engine, made[name].id):
            assert (run.status, run.last_epoch, run.attempt) == ("succeeded", epochs, 1)
            assert [e for k, e, _ in metric_rows(engine, run.id) if k == "loss"] == list(range(epochs + 1))
    mixed = [r for name in ("q1", "q2", "lr") for r in runs_of(engine, made[name].id)]
    assert len({r.lease_token for r in mixed}) == 1  # one claim: a finished run keeps its token
    assert max(r.finished_at or 0 for r in runs_of(engine, made["q1"].id)) < min(
        r.finished_at or 0 for r in runs_of(engine, made["q2"].id))


@pytest.mark.slow
def test_a_mixed_pack_trains_each_run_as_it_would_train_alone(settings: Settings, engine: Engine) -> None:
    """Real Keras, packed: q1 (2 epochs) and q2 (4 epochs) of one config and a grid over its learning
    rate (3 epochs) train as one pack of 6; each run's metrics, epoch 0 included, are those of one
    model.fit of its own config and seed (the unpacked way, pack size 1), epoch by epoch (q1's
    through q2's: the same config and seeds, so the same first two epochs)."""
    pytest.importorskip("tensorflow")
    from worker.keras_single import SingleTrainer
    from worker.runner import prepared_data

    small = {**MODEL, "limit": {"train": 96, "test": 40}, "batch_size": 32}
    sweeps = [make_sweep(engine, name="q1", replicates=2, epochs=2, **small),
              make_sweep(engine, name="q2", replicates=2, epochs=4, **small),
              make_sweep(engine, name="lr", replicates=1, epochs=3, **small,
                         grid={"optimizer.learning_rate": [0.003, 0.03]})]
    keras_settings = settings.model_copy(update={"trainer": "keras", "pack_size": 10})
    assert Worker(keras_settings, engine).run(once=True) == 1  # one pack
    runs = [r for sweep in sweeps for r in runs_of(engine, sweep.id)]
    assert len(runs) == 6 and len({r.lease_token for r in runs}) == 1
    trains = {c.id: c.train for sweep in sweeps for c in configs_of(engine, sweep.id)}
    for run in runs:
        assert (run.status, run.last_epoch) == ("succeeded", run.epochs)
        p = run.provenance or {}
        assert (p["trainer"], p["packed"], p["pack_size"]) == ("keras_packed", True, 6)
        if run.sweep_id == sweeps[0].id:
            continue  # q1's runs: q2's of the same seed, checked below
        spec = TrainSpec.model_validate(trains[run.config_id])
        alone = SingleTrainer(spec, [run.seed], prepared_data(spec, keras_settings), [None])
        want = [alone.evaluate()[0]] + [(alone.train_epoch(e, lambda: False) or {})[0]
                                        for e in range(1, run.epochs + 1)]
        got = metric_rows(engine, run.id)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            values = [v for k, _, v in got if k == key]
            assert values == pytest.approx([w[key] for w in want], rel=1e-5, abs=1e-5), (run.id, key)
    # q1 and q2 train the same (config, seed) up to q1's last epoch; the lr grid's rates differ.
    losses = [[v for k, _, v in metric_rows(engine, r.id) if k == "loss"] for r in runs]
    for short, long in ((0, 2), (1, 3)):
        assert losses[short] == pytest.approx(losses[long][:3], rel=1e-6)
    assert len({tuple(round(x or 0, 6) for x in v[:3]) for v in losses}) == 4


def test_a_searchs_planned_runs_carry_their_configs_pack_key(engine: Engine) -> None:
    """Runs the planner adds (a search's configs as work frees up, a race's seeds) pack like a grid's."""
    sweep = make_sweep(engine, name="search", method="random", max_configs=4, search_seed=1, replicates=2,
                       search={"optimizer.learning_rate": {"loguniform": [0.0001, 0.1]}}, **MODEL)
    configs = {c.id: c.pack_key for c in configs_of(engine, sweep.id)}
    assert configs and len(set(configs.values())) == 1 and None not in configs.values()
    assert {r.pack_key for r in runs_of(engine, sweep.id)} == set(configs.values())
    grid = make_sweep(engine, name="grid", replicates=1, **MODEL)
    assert [c.pack_key for c in configs_of(engine, grid.id)] == list(set(configs.values()))  # one pack key
