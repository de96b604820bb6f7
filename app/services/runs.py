"""Runs: read, list, cancel; metrics as columnar series; artifacts."""

from __future__ import annotations

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import defer

from app.db import read_session, write_session
from app.errors import InvalidTransition, NotFound, RunNotFound
from app.models import Artifact, Config, Metric, Run
from app.numbers import finite_or_none
from app.schemas import ArtifactInfo, RunMetrics, RunPublic, Series, iso
from app.services.sweeps import CANCELLED, QUEUED, RUNNING, cancel_values, get_sweep_row


def _public(run: Run, config: Config) -> RunPublic:
    return RunPublic(
        id=run.id, sweep_id=run.sweep_id, config_id=run.config_id, config_label=config.label,
        config=config.train, params=config.params, seed=run.seed, status=run.status, source=run.source,
        attempt=run.attempt, max_attempts=run.max_attempts, epochs=run.epochs, last_epoch=run.last_epoch,
        cancel_requested=run.cancel_requested, worker=run.worker_id, error=run.error,
        created_at=iso(run.created_at), started_at=iso(run.started_at), finished_at=iso(run.finished_at),
        heartbeat_at=iso(run.heartbeat_at), train_seconds=run.train_seconds, provenance=run.provenance,
        program=run.program,
    )


def read_run(engine: Engine, run_id: int) -> RunPublic:
    with read_session(engine) as s:
        row = s.execute(select(Run, Config).join(Config, Config.id == Run.config_id).where(Run.id == run_id)).first()
    if row is None:
        raise RunNotFound(run_id)
    return _public(*row).model_copy(update={"output": row[0].output})


def list_runs(engine: Engine, sweep_id: int, status: str | None = None, config_id: int | None = None,
              limit: int = 10_000, offset: int = 0) -> list[RunPublic]:
    get_sweep_row(engine, sweep_id)
    with read_session(engine) as s:
        q = (select(Run, Config).join(Config, Config.id == Run.config_id).where(Run.sweep_id == sweep_id)
             .options(defer(Run.output, raiseload=True)))  # a program's output only in read_run
        if status is not None:
            q = q.where(Run.status == status)
        if config_id is not None:
            q = q.where(Run.config_id == config_id)
        rows = s.execute(q.order_by(Run.id).limit(limit).offset(offset)).all()
    return [_public(run, config) for run, config in rows]


def cancel_run(engine: Engine, run_id: int) -> RunPublic:
    """Queued: cancelled now. Running: asked to stop, the worker ends it within an epoch.
    Already cancelled (or asked): the same answer again. Succeeded or failed: 409."""
    with write_session(engine) as s:
        changed = s.execute(update(Run).where(Run.id == run_id, Run.status.in_([QUEUED, RUNNING]))
                            .values(cancel_values()).returning(Run.id)).first()
    run = read_run(engine, run_id)
    if changed is None and run.status != CANCELLED:
        raise InvalidTransition(f"run {run_id} already {run.status}; only queued or running runs can be cancelled")
    return run


def run_metrics(engine: Engine, run_id: int, keys: list[str] | None = None) -> RunMetrics:
    """Every stored series of a run, epochs ascending; NaN and inf answer as null."""
    read_run(engine, run_id)
    with read_session(engine) as s:
        q = select(Metric.key, Metric.epoch, Metric.value).where(Metric.run_id == run_id)
        if keys:
            q = q.where(Metric.key.in_(keys))
        rows = s.execute(q.order_by(Metric.key, Metric.epoch)).all()
    series: dict[str, Series] = {}
    for key, epoch, value in rows:
        sr = series.setdefault(key, Series(epochs=[], values=[]))
        sr.epochs.append(epoch)
        sr.values.append(finite_or_none(value))
    return RunMetrics(run_id=run_id, series=series)


def list_artifacts(engine: Engine, run_id: int) -> list[ArtifactInfo]:
    read_run(engine, run_id)
    with read_session(engine) as s:
        rows = s.execute(select(Artifact.name, Artifact.content_type, func.length(Artifact.data))
                         .where(Artifact.run_id == run_id).order_by(Artifact.name)).all()
    return [ArtifactInfo(name=n, content_type=ct, size=size or 0, url=f"/api/runs/{run_id}/artifacts/{n}")
            for n, ct, size in rows]


def read_artifact(engine: Engine, run_id: int, name: str) -> tuple[str, bytes]:
    with read_session(engine) as s:
        row = s.execute(select(Artifact.content_type, Artifact.data)
                        .where(Artifact.run_id == run_id, Artifact.name == name)).first()
    if row is None:
        raise NotFound(f"run {run_id} has no artifact {name!r}")
    return row.content_type, row.data
