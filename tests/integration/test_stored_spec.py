"""A sweep's stored spec read back (app.services.stored_spec), the one reader of the planner, the
race, the prune and the decisions: a spec this version cannot read (another version wrote it) stops
planning, racing and pruning of that sweep without an error to anyone, and is logged once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import Engine, update

from app.db import read_session, write_session
from app.models import Sweep
from app.services import pruning
from app.services.decisions import sweep_decisions
from app.services.planner import plan, stored_spec
from app.services.queue import claim_runs
from tests.factories import make_sweep, runs_of

RACE = {"replicates": {"min": 2, "max": 6, "step": 2}, "race": {"metric": "val_accuracy", "alpha": 0.05}}
PRUNE = {"prune": {"method": "ci", "metric": "val_accuracy", "min_epochs": 1}}


def break_spec(engine: Engine, sweep_id: int) -> None:
    """Store what a later version might write: the blocks kept, one of them with a field this
    version does not know (specs are strict)."""
    with read_session(engine) as s:
        sweep = s.get(Sweep, sweep_id)
        assert sweep is not None and isinstance(sweep.spec, dict)
        spec: dict[str, Any] = dict(sweep.spec)
    for block in ("race", "prune"):
        if spec.get(block):
            spec[block] = {**spec[block], "from_a_later_version": True}
    with write_session(engine) as s:
        s.execute(update(Sweep).where(Sweep.id == sweep_id).values(spec=spec))


def sweep_row(engine: Engine, sweep_id: int) -> Sweep:
    with read_session(engine) as s:
        sweep = s.get(Sweep, sweep_id)
        assert sweep is not None
        return sweep


def test_each_reader_gets_the_spec_with_its_block_and_none_without(engine: Engine) -> None:
    raced = make_sweep(engine, name="raced", epochs=2, grid={"model.hidden": [[2], [4]]}, **RACE)
    pruned = make_sweep(engine, name="pruned", epochs=3, grid={"model.hidden": [[2], [4]]}, replicates=2, **PRUNE)
    plain = make_sweep(engine, name="plain", grid={"model.hidden": [[2], [4]]})
    race_spec = stored_spec(sweep_row(engine, raced.id))
    assert race_spec is not None and race_spec.race is not None
    assert stored_spec(sweep_row(engine, pruned.id)) is None  # a grid that prunes plans nothing more
    prune_spec = pruning.spec_of(sweep_row(engine, pruned.id))
    assert prune_spec is not None and prune_spec.prune is not None and prune_spec.prune.min_epochs == 1
    assert pruning.spec_of(sweep_row(engine, raced.id)) is None
    assert stored_spec(sweep_row(engine, plain.id)) is None and pruning.spec_of(sweep_row(engine, plain.id)) is None
    assert sweep_decisions(engine, raced.id)["race"] is not None
    assert sweep_decisions(engine, pruned.id)["prune"] is not None
    assert sweep_decisions(engine, plain.id) == {"sweep_id": plain.id, "race": None, "prune": None, "configs": []}


def test_an_unreadable_stored_spec_plans_races_and_prunes_nothing_and_is_logged_once(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    raced = make_sweep(engine, name="raced", epochs=2, grid={"model.hidden": [[2], [4]]}, **RACE)
    pruned = make_sweep(engine, name="pruned", epochs=3, grid={"model.hidden": [[2], [4]]}, replicates=2, **PRUNE)
    before = len(runs_of(engine, raced.id))
    break_spec(engine, raced.id)
    break_spec(engine, pruned.id)
    caplog.set_level(logging.WARNING, logger="sweeplab.specs")
    for _ in range(2):
        assert stored_spec(sweep_row(engine, raced.id)) is None
        assert pruning.spec_of(sweep_row(engine, pruned.id)) is None
        assert sweep_decisions(engine, raced.id) == {"sweep_id": raced.id, "race": None, "prune": None,
                                                     "configs": []}
        assert plan(engine, raced.id).new_runs == 0
    assert len(runs_of(engine, raced.id)) == before
    claims = [c for c in claim_runs(engine, "worker-a", 10, 30.0) if c.sweep_id == pruned.id]
    assert claims and pruning.after_epoch(engine, claims, 1) == set()
    warnings = [r.getMessage() for r in caplog.records if "no longer validates" in r.getMessage()]
    assert sorted(warnings) == sorted(f"sweep {i}: its stored spec no longer validates; it is not planned, raced"
                                      f" or pruned" for i in (raced.id, pruned.id))
