"""Provenance on every run: the worker records it (fenced) before it trains, a resumed run keeps
its earlier attempt, an external run may send its own (bounded), GET /api/runs/{id} answers it,
sweep_provenance gives the distinct values; and the same seed and config trained twice on one
machine give the same metrics, packed or not (real Keras)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app.config import Settings
from app.db import write_session
from app.main import create_app
from app.models import Run, RunStatus
from app.services.provenance import configs_provenance, sweep_provenance
from app.services.queue import claim_runs, finish_run, reap_expired, record_epoch, record_provenance
from app.spec import TrainSpec
from tests.factories import get_run, make_sweep, metric_rows, runs_of
from worker.checkpoint import dump_state
from worker.fake_trainer import FakeTrainer
from worker.main import Worker
from worker.trainer import PreparedData, State


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_worker_records_each_runs_provenance(settings: Settings, engine: Engine, api: TestClient) -> None:
    sweep = make_sweep(engine, replicates=3, epochs=2)
    Worker(settings, engine).run(once=True)
    want_hash = sha256_of(settings.data_dir / "mnist.npz")
    for run in runs_of(engine, sweep.id):
        assert run.status == "succeeded"
        answer = api.get(f"/api/runs/{run.id}").json()
        assert answer["provenance"] == run.provenance
        p = run.provenance or {}
        assert (p["seed"], p["attempt"], p["trainer"], p["packed"], p["pack_size"]) == (run.seed, 1, "fake", False, 3)
        assert (p["dataset"], p["dataset_sha256"]) == ("mnist", want_hash)
        assert (p["host"], p["python"], p["numpy"]) == (socket.gethostname(), platform.python_version(),
                                                         np.__version__)
        assert p["sweeplab"] == importlib.metadata.version("sweeplab")
        assert p["gpu"] == "none"  # the fake trainer never loads TensorFlow
        assert "earlier" not in p


def test_a_resumed_run_keeps_where_its_earlier_attempt_trained(settings: Settings, engine: Engine) -> None:
    make_sweep(engine, epochs=3)
    (claim,) = claim_runs(engine, "elsewhere", 1, 0.01)
    assert record_provenance(engine, [claim], {claim.run_id: {"host": "elsewhere", "gpu": "H100"}}) == set()
    record_epoch(engine, claim, 0, {"loss": 1.0}, dump_state({"epochs_done": np.array(0)}), 0.01)
    time.sleep(0.05)  # its lease expires; this process's worker reaps and resumes it
    Worker(settings.model_copy(update={"reap_seconds": 0.0}), engine).run(once=True)
    run = get_run(engine, claim.run_id)
    assert run.status == "succeeded" and run.attempt == 2
    p = run.provenance or {}
    assert (p["attempt"], p["host"], p["gpu"]) == (2, socket.gethostname(), "none")
    assert p["earlier"] == [{"host": "elsewhere", "gpu": "H100", "attempt": 1}]


def test_a_stale_lease_cannot_record_provenance(settings: Settings, engine: Engine) -> None:
    make_sweep(engine, replicates=2)
    first, second = claim_runs(engine, "slow", 2, 0.01)
    time.sleep(0.05)
    assert sorted(reap_expired(engine).requeued) == [first.run_id, second.run_id]
    thief = claim_runs(engine, "thief", 1, 30.0)
    assert [c.run_id for c in thief] == [first.run_id]
    assert record_provenance(engine, thief, {first.run_id: {"host": "thief"}}) == set()
    # The slow worker's token no longer holds either run (one re-claimed, one queued): nothing is written.
    assert record_provenance(engine, [first, second], {first.run_id: {"host": "slow"},
                                                       second.run_id: {"host": "slow"}}) == {first.run_id,
                                                                                             second.run_id}
    assert get_run(engine, first.run_id).provenance == {"host": "thief", "attempt": 2}
    assert get_run(engine, second.run_id).provenance is None
    # A finished run refuses it too, even with its own token (status is part of the fence).
    assert finish_run(engine, thief[0], RunStatus.SUCCEEDED)
    assert record_provenance(engine, thief, {first.run_id: {"host": "later"}}) == {first.run_id}
    assert get_run(engine, first.run_id).provenance == {"host": "thief", "attempt": 2}


def test_a_retried_write_of_one_attempt_keeps_one_record(settings: Settings, engine: Engine) -> None:
    make_sweep(engine)
    (claim,) = claim_runs(engine, "w", 1, 30.0)
    for _ in range(2):
        assert record_provenance(engine, [claim], {claim.run_id: {"host": "h"}}) == set()
    assert get_run(engine, claim.run_id).provenance == {"host": "h", "attempt": 1}


class _Thief:
    """A trainer factory that, while the trainer is built, lets another worker take the pack's first
    run: the provenance write, the pack's first, is refused for it and the worker drops it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, spec: TrainSpec, seeds: list[int], data: PreparedData,
                 states: list[State | None]) -> FakeTrainer:
        with write_session(self.engine) as s:
            run_id = min(s.scalars(update(Run).where(Run.status == RunStatus.RUNNING.value)
                                   .values(lease_expires_at=Run.lease_expires_at - 3600).returning(Run.id)))
            s.execute(update(Run).where(Run.id != run_id).values(lease_expires_at=Run.lease_expires_at + 3600))
        assert run_id in reap_expired(self.engine).requeued
        claim_runs(self.engine, "thief", 1, 30.0)
        return FakeTrainer(spec, seeds, data, states)


def test_the_worker_drops_a_run_whose_provenance_write_is_refused(settings: Settings, engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=2)
    Worker(settings, engine, factory=_Thief(engine)).run(max_packs=1)
    stolen, kept = runs_of(engine, sweep.id)
    assert (stolen.status, stolen.worker_id, stolen.provenance) == ("running", "thief", None)
    assert metric_rows(engine, stolen.id) == []  # nothing written for it after the refusal
    assert kept.status == "succeeded" and (kept.provenance or {})["pack_size"] == 2


class _Unknowable(FakeTrainer):
    @property
    def trainer_kind(self) -> str:
        raise RuntimeError("cannot tell")


def _no_provenance(spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None]) -> FakeTrainer:
    """A trainer whose provenance cannot be gathered (its kind raises): training goes on without it."""
    return _Unknowable(spec, seeds, data, states)


def test_failing_to_gather_provenance_never_fails_training(settings: Settings, engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=2)
    Worker(settings, engine, factory=_no_provenance).run(once=True)
    assert [(r.status, r.provenance) for r in runs_of(engine, sweep.id)] == [("succeeded", None)] * 2


# ---- external runs

def create(api: TestClient, **body: Any) -> Any:
    return api.post("/api/external/runs", json={"sweep": "notebook", "config": {"hidden": [32]}, "seed": 3, **body})


def test_an_external_run_stores_the_provenance_it_sends(api: TestClient, engine: Engine) -> None:
    sent = {"python": "3.12.1", "tensorflow": "2.21.0", "host": "laptop", "cores": 8, "gpu": None, "packed": False,
            "ratio": 0.5, "x" * 100: "y" * 1024}
    made = create(api, provenance=sent, client_token="prov-token-1")
    assert made.status_code == 201, made.text
    assert made.json()["provenance"] == sent
    assert api.get(f"/api/runs/{made.json()['id']}").json()["provenance"] == sent
    assert get_run(engine, made.json()["id"]).provenance == sent
    again = create(api, provenance={"host": "other"}, client_token="prov-token-1")  # a retried create
    assert again.status_code == 200 and again.json()["provenance"] == sent
    assert create(api).json()["provenance"] is None  # optional


def test_the_run_page_hands_over_the_provenance_in_its_order(api: TestClient) -> None:
    sent = {"seed": 3, "python": "3.12.1", "host": "</script><b>x</b>", "cores": 8, "gpu": None}
    run = create(api, provenance=sent).json()
    page = api.get(f"/runs/{run['id']}").text
    found = re.search(r'<script id="run-provenance" type="application/json">(.*?)</script>', page, re.S)
    assert found is not None and "<b>" not in found.group(1)  # the markup stays inside the JSON, escaped
    assert json.loads(found.group(1)) == [list(item) for item in sent.items()]
    assert 'id="provenance"' in page and "<h2>Provenance</h2>" in page
    bare = create(api, seed=4).json()
    found = re.search(r'<script id="run-provenance" type="application/json">(.*?)</script>',
                      api.get(f"/runs/{bare['id']}").text, re.S)
    assert found is not None and json.loads(found.group(1)) is None


def field_errors(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["loc"], f["msg"]) for f in answer["error"]["fields"]]


@pytest.mark.parametrize(("provenance", "words"), [
    ({f"k{i}": i for i in range(51)}, "at most 50 keys"),
    ({"host": "h" * 1025}, "provenance.host: at most 1024 characters"),
    ({"nested": {"a": 1}}, "provenance.nested: must be text, a number"),
    ({"list": [1, 2]}, "provenance.list: must be text, a number"),
    ({"": 1}, "1 to 100 characters"),
    ({"k" * 101: 1}, "1 to 100 characters"),
    ({"tab\there": 1}, "no control characters"),
    ({"big": 2**63}, "provenance.big: out of range"),
    ({"host": "a\u0000b"}, "provenance.host: text must not hold a NUL"),
    ("python 3.11", "must be an object"),
    ([1], "must be an object"),
])
def test_bad_provenance_is_a_422_naming_the_field(api: TestClient, provenance: Any, words: str) -> None:
    answer = create(api, provenance=provenance)
    assert answer.status_code == 422, answer.text
    [(loc, msg)] = field_errors(answer.json())
    assert loc == "provenance" and words in msg, (loc, msg)
    assert api.get("/api/sweeps").json() == []  # nothing stored


@pytest.mark.parametrize(("raw", "words"), [
    ('{"x": NaN}', "provenance.x: not a finite number"),
    ('{"x": Infinity}', "provenance.x: not a finite number"),
    ('{"k\\ud800": 1}', "provenance.<key>: text must not hold a NUL or a lone surrogate character"),
    ('{"k": "\\udfff"}', "provenance.k: text must not hold a NUL or a lone surrogate character"),
])
def test_provenance_the_databases_cannot_store_is_a_422(api: TestClient, raw: str, words: str) -> None:
    body = f'{{"sweep": "s", "seed": 0, "provenance": {raw}}}'
    answer = api.post("/api/external/runs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert field_errors(answer.json()) == [("provenance", words)]
    assert api.get("/api/sweeps").json() == []


def test_a_huge_provenance_is_refused_before_parsing(api: TestClient, settings: Settings) -> None:
    huge = json.dumps({"sweep": "s", "seed": 0, "provenance": {"x": "y" * (settings.max_body_bytes + 10)}})
    assert api.post("/api/external/runs", content=huge, headers={"content-type": "application/json"}
                    ).status_code == 413


# ---- distinct values over a sweep

def test_sweep_provenance_gives_the_distinct_values_of_succeeded_runs(settings: Settings, engine: Engine) -> None:
    sweep = make_sweep(engine, replicates=3, grid={"model.hidden": [[4], [8]]})
    other = make_sweep(engine, replicates=1)
    records = {}
    hosts, versions = ["a", "b", "a"], ["2.21.0", "2.21.0", "2.20.0"]
    for config_index in range(2):
        claims = claim_runs(engine, "w", 3, 30.0)
        for i, claim in enumerate(claims):
            records[claim.run_id] = {"host": hosts[i], "tensorflow": versions[i], "packed": True,
                                     "pack_size": 3 + config_index, "seed": claim.seed}
        assert record_provenance(engine, claims, records) == set()
        for i, claim in enumerate(claims):
            # The last replicate of the second config fails: its values must not count.
            status = RunStatus.FAILED if (config_index, i) == (1, 2) else RunStatus.SUCCEEDED
            assert finish_run(engine, claim, status)
    (other_claim,) = claim_runs(engine, "w", 1, 30.0)
    record_provenance(engine, [other_claim], {other_claim.run_id: {"host": "elsewhere"}})
    finish_run(engine, other_claim, RunStatus.SUCCEEDED)

    runs = runs_of(engine, sweep.id)
    done = [r for r in runs if r.status == "succeeded"]
    assert len(done) == 5

    def distinct(rows: list[Run]) -> dict[str, list[Any]]:
        out: dict[str, set[Any]] = {}
        for r in rows:
            for k, v in (r.provenance or {}).items():
                out.setdefault(k, set()).add(v)
        return {k: sorted(v) for k, v in sorted(out.items())}

    want = distinct(done)
    assert want["tensorflow"] == ["2.20.0", "2.21.0"] and want["pack_size"] == [3, 4] and want["attempt"] == [1]
    assert sweep_provenance(engine, sweep.id) == want
    first_config = [r for r in done if r.config_id == runs[0].config_id]
    assert configs_provenance(engine, [runs[0].config_id]) == distinct(first_config)
    both = configs_provenance(engine, [runs[0].config_id, runs_of(engine, other.id)[0].config_id])
    assert both["host"] == ["a", "b", "elsewhere"]
    assert configs_provenance(engine, []) == {} and sweep_provenance(engine, other.id + 1) == {}


# ---- determinism: real Keras

def metrics_of(engine: Engine, sweep_id: int) -> list[list[tuple[str, int, float | None]]]:
    """Each run's metric rows but its wall time, in seed order."""
    return [[row for row in metric_rows(engine, r.id) if row[0] != "epoch_seconds"]
            for r in sorted(runs_of(engine, sweep_id), key=lambda r: r.seed)]


@pytest.mark.slow
def test_the_same_seed_and_config_trained_twice_give_the_same_metrics(settings: Settings, engine: Engine) -> None:
    """Two sweeps of one spec trained packed (both seeds in one pack), two trained one model per run:
    the metrics of each pair are identical, epoch 0 included; each run says how it trained."""
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    spec = {"epochs": 2, "batch_size": 64, "model": {"hidden": [8]},
            "optimizer": {"name": "adam", "learning_rate": 0.01}}
    want_hash = sha256_of(settings.data_dir / "mnist.npz")
    gpu = "none" if not tf.config.list_physical_devices("GPU") else None
    for pack_size, replicates, kind in ((2, 2, "keras_packed"), (1, 1, "keras_single")):
        first, second = (make_sweep(engine, replicates=replicates, **spec) for _ in range(2))
        keras_settings = settings.model_copy(update={"trainer": "keras", "pack_size": pack_size})
        assert Worker(keras_settings, engine).run(once=True) == 2  # one pack per sweep
        runs = runs_of(engine, first.id) + runs_of(engine, second.id)
        assert [r.status for r in runs] == ["succeeded"] * 2 * replicates
        a, b = metrics_of(engine, first.id), metrics_of(engine, second.id)
        assert [len(rows) for rows in a] == [12] * replicates  # 4 keys at epochs 0, 1 and 2
        assert a == b, kind
        loss = {epoch: value for key, epoch, value in a[0] if key == "loss"}
        assert loss[2] is not None and loss[0] is not None and loss[2] < loss[0]  # it trained
        if replicates == 2:
            assert a[0] != a[1]  # the seeds of a pack differ: so do their metrics
        for run in runs:
            p = run.provenance or {}
            assert (p["trainer"], p["packed"], p["pack_size"]) == (kind, pack_size > 1, replicates)
            assert p["dataset_sha256"] == want_hash and p["seed"] == run.seed
            assert (p["tensorflow"], p["keras"]) == (tf.__version__, keras.__version__)
            assert p["gpu"] == gpu if gpu else p["gpu"] != "none"


# ---- the notebook callback sends its own

@pytest.mark.slow
def test_the_callback_sends_its_provenance(live_server: Any, engine: Engine) -> None:
    """A real model.fit tracked by SweeplabCallback against a live server: the run's provenance is
    this process's Python, TensorFlow, Keras and NumPy, host and CPU."""
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    from sweeplab import callback as sweeplab_callback

    rng = np.random.default_rng(0)
    x, y = rng.random((32, 6)).astype("float32"), rng.integers(0, 10, 32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    cb = sweeplab_callback.SweeplabCallback(url=live_server.url, sweep="prov", config={"w": 1}, seed=5)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    assert sweeplab_callback.flush(timeout=30)
    p = get_run(engine, cb.run_id).provenance or {}  # type: ignore[arg-type]
    assert (p["seed"], p["trainer"]) == (5, "keras_callback")
    assert (p["python"], p["tensorflow"], p["keras"], p["numpy"]) == (
        platform.python_version(), tf.__version__, keras.__version__, np.__version__)
    assert p["host"] == socket.gethostname() and p["cpu"] and p["sweeplab"] == importlib.metadata.version("sweeplab")


def test_the_callback_tracks_a_fit_without_provenance_when_gathering_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("keras")
    from sweeplab import callback as sweeplab_callback

    def broken() -> dict[str, str]:
        raise OSError("no /proc here")

    monkeypatch.setattr(sweeplab_callback, "machine_facts", broken)
    assert sweeplab_callback.run_provenance(3) == {}
