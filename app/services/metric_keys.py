"""Which metric keys the runs of a sweep, of some configs or of one run report: the pages draw each
one, the catalogue's and those only an external run logs alike (app/metrics.py describes them)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, select

from app import metrics
from app.db import read_session
from app.models import Config, CurveStat, Metric


def sweep_keys(engine: Engine, sweep_id: int) -> list[str]:
    """Every key with a value a run of the sweep reported, in page order: read from the curves'
    cells (configs x keys x epochs, migration 0007), not from every metric row."""
    with read_session(engine) as s:
        keys = s.scalars(select(CurveStat.key).distinct().where(
            CurveStat.config_id.in_(select(Config.id).where(Config.sweep_id == sweep_id))))
        return metrics.ordered(keys)


def config_keys(engine: Engine, config_ids: Sequence[int]) -> list[str]:
    """Every key with a value a run of CONFIG_IDS reported, in page order."""
    if not config_ids:
        return []
    with read_session(engine) as s:
        keys = s.scalars(select(CurveStat.key).distinct().where(CurveStat.config_id.in_(list(config_ids))))
        return metrics.ordered(keys)


def run_keys(engine: Engine, run_id: int) -> list[str]:
    """Every key the run reported (the unique index on (run_id, key, epoch) answers it)."""
    with read_session(engine) as s:
        return metrics.ordered(s.scalars(select(Metric.key).where(Metric.run_id == run_id).distinct()))
