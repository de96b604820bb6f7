"""MLflow's runs as its JSON shows them: get-run, runs/search (its filter and order:
app/services/mlflow_search.py) and a metric's history.

A run's data holds its metrics at their latest epoch, its params (the config's values as the text
logged, the seed's own text), and its tags but the server's (under `sweeplab.`). A queued run
reads as SCHEDULED, a pruned one as KILLED.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.orm import Session

from app.db import read_session
from app.metrics import keras_key
from app.models import Config, Metric, Run
from app.services.mlflow_experiments import DEFAULT_EXPERIMENT_ID, ExperimentNotFound, ms, sweep_for
from app.services.mlflow_metric_points import metric_json
from app.services.mlflow_run_values import (
    RESERVED_TAG_PREFIX,
    RUN_NAME_TAG,
    SEED,
    SEED_PARAM_TAG,
    TO_MLFLOW_STATUS,
    USER_TAG,
    RunNotFound,
    param_text,
    parse_run_id,
)
from app.services.mlflow_search import Row, matches, page, parse_filter, parse_order, sort_rows

MAX_HISTORY = 100_001  # every epoch of one key
RUN_ATTRIBUTES = frozenset({"run_id", "run_name", "status", "user_id", "experiment_id", "artifact_uri",
                            "lifecycle_stage", "start_time", "end_time"})


def _latest_metrics(s: Session, run_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each run's metrics at their latest epoch, as MLflow's run data lists them."""
    out: dict[int, list[dict[str, Any]]] = {}
    for i in range(0, len(run_ids), 500):
        ids = list(run_ids[i:i + 500])
        last = (select(Metric.run_id, Metric.key, func.max(Metric.epoch).label("epoch"))
                .where(Metric.run_id.in_(ids)).group_by(Metric.run_id, Metric.key).subquery())
        rows = s.execute(select(Metric.run_id, Metric.key, Metric.epoch, Metric.value, Metric.created_at)
                         .join(last, and_(Metric.run_id == last.c.run_id, Metric.key == last.c.key,
                                          Metric.epoch == last.c.epoch))
                         .order_by(Metric.run_id, Metric.key)).all()
        for r in rows:
            out.setdefault(r.run_id, []).append({"key": r.key, "value": metric_json(r.value),
                                                 "timestamp": ms(r.created_at), "step": r.epoch})
    return out


def _params(run: Run, config: Config) -> dict[str, str]:
    params = {k: param_text(v) for k, v in (config.params or {}).items()}
    seed_text = (run.tags or {}).get(SEED_PARAM_TAG)
    if seed_text is not None:
        params[SEED] = str(seed_text)
    return params


def _visible_tags(run: Run) -> dict[str, str]:
    return {k: str(v) for k, v in (run.tags or {}).items() if not k.startswith(RESERVED_TAG_PREFIX)}


def _run_name(run: Run) -> str:
    name = (run.tags or {}).get(RUN_NAME_TAG)
    return str(name) if name else f"run {run.id}"


def run_info(run: Run) -> dict[str, Any]:
    """The run's info, as MLflow's RunInfo (runs/update answers it alone)."""
    info: dict[str, Any] = {
        "run_id": str(run.id), "run_uuid": str(run.id), "run_name": _run_name(run),
        "experiment_id": str(run.sweep_id), "user_id": str((run.tags or {}).get(USER_TAG, "")),
        "status": TO_MLFLOW_STATUS.get(run.status, "RUNNING"),
        "start_time": ms(run.started_at or run.created_at),
        "artifact_uri": f"mlflow-artifacts:/{run.sweep_id}/{run.id}/artifacts", "lifecycle_stage": "active"}
    if run.finished_at is not None:
        info["end_time"] = ms(run.finished_at)
    return info


def _run_json(run: Run, config: Config, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {"info": run_info(run),
            "data": {"metrics": metrics,
                     "params": [{"key": k, "value": v} for k, v in _params(run, config).items()],
                     "tags": [{"key": k, "value": v} for k, v in _visible_tags(run).items()]},
            "inputs": {}}


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    rid = parse_run_id(run_id)
    with read_session(engine) as s:
        row = s.execute(select(Run, Config).join(Config, Config.id == Run.config_id).where(Run.id == rid)).first()
        if row is None:
            raise RunNotFound(run_id)
        metrics = _latest_metrics(s, [rid]).get(rid, [])
    return _run_json(row[0], row[1], metrics)


def search_runs(engine: Engine, experiment_ids: Sequence[str], filter_text: str | None, order_by: Sequence[str],
                max_results: int, page_token: str | None, view: str) -> tuple[list[dict[str, Any]], str | None]:
    """Runs of the experiments that pass the filter, newest first unless ordered otherwise."""
    clauses = parse_filter(filter_text, RUN_ATTRIBUTES)
    order = parse_order(order_by, RUN_ATTRIBUTES)
    if view == "DELETED_ONLY":  # nothing is deleted here
        return page([], max_results, page_token)
    with read_session(engine) as s:
        sweep_ids = set()
        for eid in experiment_ids:
            sweep = sweep_for(s, eid)
            if sweep is None and eid != DEFAULT_EXPERIMENT_ID:
                raise ExperimentNotFound(eid)
            if sweep is not None:
                sweep_ids.add(sweep.id)
        pairs = s.execute(select(Run, Config).join(Config, Config.id == Run.config_id)
                          .where(Run.sweep_id.in_(sweep_ids)).order_by(Run.id.desc())).all() if sweep_ids else []
        metrics = _latest_metrics(s, [r.id for r, _ in pairs])
    rows = []
    for run, config in pairs:
        js = _run_json(run, config, metrics.get(run.id, []))
        info = js["info"]
        row = Row(metrics={m["key"]: None if m["value"] == "NaN" else float(m["value"]) for m in js["data"]["metrics"]},
                  params=_params(run, config), tags=_visible_tags(run),
                  attributes={k: info.get(k) for k in RUN_ATTRIBUTES})
        row.attributes["json"] = js
        if matches(row, clauses):
            rows.append(row)
    rows = sort_rows(rows, order or parse_order(["attributes.start_time DESC"], RUN_ATTRIBUTES))
    return page([r.attributes["json"] for r in rows], max_results, page_token)


def metric_history(engine: Engine, run_id: str, key: str) -> list[dict[str, Any]]:
    rid = parse_run_id(run_id)
    with read_session(engine) as s:
        if s.get(Run, rid) is None:
            raise RunNotFound(run_id)
        if "\x00" in key:  # no key holds one (they are refused when logged); PostgreSQL refuses it
            return []
        rows = s.execute(select(Metric.epoch, Metric.value, Metric.created_at)
                         .where(Metric.run_id == rid, Metric.key == keras_key(key))
                         .order_by(Metric.epoch).limit(MAX_HISTORY)).all()
    return [{"key": keras_key(key), "value": metric_json(r.value), "timestamp": ms(r.created_at), "step": r.epoch}
            for r in rows]
