"""Plain factory functions for tests (no mocks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from app.db import read_session
from app.models import Metric, Run, RunEvent
from app.schemas import SweepPublic
from app.services.sweeps import create_sweep
from app.spec import SweepSpec


def make_sweep(engine: Engine, max_attempts: int = 3, **spec: Any) -> SweepPublic:
    data = {"name": "test sweep", "epochs": 2, "model": {"hidden": [4]}, **spec}
    return create_sweep(engine, SweepSpec.model_validate(data), max_runs=10_000, max_attempts=max_attempts)


def runs_of(engine: Engine, sweep_id: int) -> list[Run]:
    with read_session(engine) as s:
        return list(s.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)))


def get_run(engine: Engine, run_id: int) -> Run:
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run


def metric_rows(engine: Engine, run_id: int) -> list[tuple[str, int, float | None]]:
    with read_session(engine) as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(Metric.key, Metric.epoch, Metric.value).where(Metric.run_id == run_id)
            .order_by(Metric.key, Metric.epoch))]


def events_of(engine: Engine, run_id: int) -> list[str]:
    with read_session(engine) as s:
        return list(s.scalars(select(RunEvent.kind).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
