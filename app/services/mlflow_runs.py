"""MLflow's runs are sweeplab's external runs (app/api/mlflow/ answers them over HTTP; experiments,
the external sweeps they belong to: app/services/mlflow_experiments.py). This module holds a run's
lifecycle (create, rename and end, exists) and answers for the whole: every name the routes use
imports from here. The rest, one concept a module:

- app/services/mlflow_run_values.py: the tags the server keeps, limits, statuses, param text, seeds, run ids;
- app/services/mlflow_run_views.py: a run as MLflow's JSON, get-run, runs/search, a metric's history;
- app/services/mlflow_run_logging.py: params (the config), tags, runs/log-batch, tag deletes;
- app/services/mlflow_metric_points.py: metric points as epochs ("a metric's step is its epoch").

**MLflow runs are external runs** (`source='external'`, app/services/external.py): the run id is
the run's id as text. Like every external run, one silent for SWEEPLAB_EXTERNAL_STALE_SECONDS (no
write at all) is ended failed by the reaper; any write to a running run counts as a heartbeat.
Writes to a run that ended are INVALID_STATE, except tags (MLflow allows them on finished runs).
A run starts in the config of no params (`{}`, labelled "base") and moves to the config of its
params as they are logged (app/services/mlflow_run_logging.py); the param (or tag) `seed` is the
replicate.

**Statuses**: RUNNING, FINISHED (succeeded; cancelled when a stop was asked), FAILED, KILLED
(cancelled); a queued run reads as SCHEDULED, a pruned one as KILLED.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from app.db import db_now, read_session, write_session
from app.errors import InvalidSpec
from app.models import Run, RunEvent, Sweep, SweepKind
from app.services import external
from app.services.mlflow_experiments import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    ExperimentNotFound,
    sweep_for,
)
from app.services.mlflow_metric_points import MAX_EPOCH, STEPLESS_TAG, MetricPoint, metric_json
from app.services.mlflow_run_logging import (
    check_tag_keys,
    check_tags_size,
    delete_tag,
    log_batch,
    store_tags,
    tagged_run,
    writable_run,
)
from app.services.mlflow_run_values import (
    EXTERNAL,
    FROM_MLFLOW_STATUS,
    MAX_SEED,
    MAX_TAGS_CHARS,
    MAX_TAGS_PER_RUN,
    RESERVED_TAG_PREFIX,
    RUN_NAME_TAG,
    RUNNING,
    SEED,
    SEED_PARAM_TAG,
    TO_MLFLOW_STATUS,
    USER_TAG,
    RunNotFound,
    param_text,
    param_value,
    parse_run_id,
    parse_seed,
)
from app.services.mlflow_run_views import MAX_HISTORY, RUN_ATTRIBUTES, get_run, metric_history, run_info, search_runs

__all__ = [
    "EXTERNAL", "FROM_MLFLOW_STATUS", "MAX_EPOCH", "MAX_HISTORY", "MAX_SEED", "MAX_TAGS_CHARS", "MAX_TAGS_PER_RUN",
    "RESERVED_TAG_PREFIX", "RUNNING", "RUN_ATTRIBUTES", "RUN_NAME_TAG", "SEED", "SEED_PARAM_TAG", "STEPLESS_TAG",
    "TO_MLFLOW_STATUS", "USER_TAG", "MetricPoint", "RunNotFound", "create_run", "delete_tag", "get_run", "log_batch",
    "metric_history", "metric_json", "param_text", "param_value", "parse_run_id", "parse_seed", "run_exists",
    "search_runs", "update_run",
]


def create_run(engine: Engine, experiment_id: str | None, user_id: str | None, run_name: str | None,
               tags: dict[str, str], max_runs: int) -> dict[str, Any]:
    """A running external run in the experiment's sweep, in the config of no params (yet)."""
    eid = experiment_id or DEFAULT_EXPERIMENT_ID
    tags = dict(tags)
    if run_name:
        tags[RUN_NAME_TAG] = run_name
    if user_id and USER_TAG not in tags:
        tags[USER_TAG] = user_id
    check_tag_keys(tags)
    check_tags_size(tags)
    seed = parse_seed(tags[SEED], "tags.seed") if SEED in tags else 0
    with write_session(engine) as s:
        external._lock(s)
        if eid == DEFAULT_EXPERIMENT_ID:
            sweep: Sweep | None = external._find_or_create_sweep(
                s, external.ExternalRunRequest(sweep=DEFAULT_EXPERIMENT_NAME, config={}, seed=0))
        else:
            sweep = sweep_for(s, eid)
        if sweep is None:
            raise ExperimentNotFound(eid)
        if sweep.kind != SweepKind.EXTERNAL.value:
            raise InvalidSpec(f"experiment {eid} is a sweep of sweeplab's queue; MLflow runs log into "
                              "experiments made by MLflow or by external runs (external sweeps)")
        n = s.scalar(select(func.count()).select_from(Run).where(Run.sweep_id == sweep.id)) or 0
        if n >= max_runs:
            raise InvalidSpec(f"experiment {sweep.id} already has {n} runs; this server accepts at most {max_runs}")
        cfg = external._find_or_create_config(s, sweep.id, {}, max_runs)
        run_id = s.execute(insert(Run).values(
            sweep_id=sweep.id, config_id=cfg.id, seed=seed, status=RUNNING, source=EXTERNAL, attempt=1,
            max_attempts=1, epochs=0, last_epoch=-1, cancel_requested=False,
            worker_id=f"mlflow {user_id}"[:200] if user_id else "mlflow", tags=tags,
            created_at=db_now(), started_at=db_now(), heartbeat_at=db_now(), train_seconds=0.0,
        ).returning(Run.id)).scalar_one()
        s.execute(update(Sweep).where(Sweep.id == sweep.id).values(run_count=n + 1))
        s.add(RunEvent(run_id=run_id, kind="started", worker_id="mlflow", message="MLflow run"))
    return get_run(engine, str(run_id))


def update_run(engine: Engine, run_id: str, status: str | None, run_name: str | None) -> dict[str, Any]:
    """Rename the run and/or end it (FINISHED, FAILED, KILLED); RUNNING keeps it running."""
    rid = parse_run_id(run_id)
    if status is not None and status not in FROM_MLFLOW_STATUS and status != "RUNNING":
        raise InvalidSpec(f"status: one of RUNNING, FINISHED, FAILED, KILLED, not {status[:30]!r}",
                          fields=[{"loc": "status", "msg": "one of RUNNING, FINISHED, FAILED, KILLED"}])
    # The status first: a status the run cannot take refuses the whole update, the name included.
    if status in FROM_MLFLOW_STATUS:
        with read_session(engine) as s:
            run = s.get(Run, rid)
        if run is None:
            raise RunNotFound(run_id)
        if run.source != EXTERNAL:
            raise InvalidSpec(f"run {rid} is trained by sweeplab's workers; MLflow cannot end it")
        error = "the MLflow client ended the run FAILED" if status == "FAILED" else None
        external.finish_external_run(engine, rid, FROM_MLFLOW_STATUS[status], error)
    elif status == "RUNNING":
        with write_session(engine) as s:
            writable_run(s, rid, "status changes")
    if run_name:
        with write_session(engine) as s:
            store_tags(s, tagged_run(s, rid), {RUN_NAME_TAG: run_name})
    with read_session(engine) as s:
        found = s.get(Run, rid)
    if found is None:
        raise RunNotFound(run_id)
    return run_info(found)


def run_exists(engine: Engine, run_id: str) -> None:
    """NotFound unless RUN_ID names a run (routes that accept and drop what they are sent)."""
    rid = parse_run_id(run_id)
    with read_session(engine) as s:
        if s.scalar(select(Run.id).where(Run.id == rid)) is None:
            raise RunNotFound(run_id)
