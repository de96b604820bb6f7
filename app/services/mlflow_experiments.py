"""MLflow's experiments are sweeplab's external sweeps (app/api/mlflow.py answers them over HTTP).

The experiment id is the sweep's id as text; "the experiment named N" is the newest external sweep
named N (any study), and creating one that exists is RESOURCE_ALREADY_EXISTS. MLflow's default
experiment, id "0", is the external sweep named "Default", made by the first run logged into it
(app.services.mlflow_runs.create_run); until then it reads as an empty experiment. Any sweep
(queued ones too) can be read by its id, but only external ones are found by name or listed, and
only they take runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.db import read_session, write_session
from app.errors import AlreadyExists, InvalidSpec, NotFound
from app.models import Sweep, SweepKind
from app.services import external
from app.services.mlflow_run_values import row_id
from app.services.mlflow_search import Row, matches, page, parse_filter, parse_order, sort_rows
from app.text import encodable

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
EXPERIMENT_ATTRIBUTES = frozenset({"name", "experiment_id", "lifecycle_stage", "creation_time", "last_update_time"})


class ExperimentNotFound(NotFound):
    def __init__(self, experiment_id: str) -> None:
        super().__init__(f"experiment {experiment_id[:100]!r} not found")


def ms(seconds: float | None) -> int | None:
    """Unix seconds as MLflow's milliseconds."""
    return int(seconds * 1000) if seconds is not None else None


def check_text(text: str, where: str, most: int) -> str:
    if len(text) > most:
        raise InvalidSpec(f"{where}: over {most} characters", fields=[{"loc": where, "msg": f"over {most} characters"}])
    if "\x00" in text or not encodable(text):
        raise InvalidSpec(f"{where}: holds a NUL or a lone surrogate, which cannot be stored",
                          fields=[{"loc": where, "msg": "cannot be stored"}])
    return text


def _experiment_id(sweep: Sweep) -> str:
    return str(sweep.id)


def _experiment_json(sweep: Sweep, last_update: float | None = None) -> dict[str, Any]:
    tags = sweep.spec.get("tags") if isinstance(sweep.spec, dict) else None
    return {"experiment_id": _experiment_id(sweep), "name": sweep.name,
            "artifact_location": f"mlflow-artifacts:/{sweep.id}", "lifecycle_stage": "active",
            "creation_time": ms(sweep.created_at), "last_update_time": ms(last_update or sweep.created_at),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}


def _virtual_default() -> dict[str, Any]:
    return {"experiment_id": DEFAULT_EXPERIMENT_ID, "name": DEFAULT_EXPERIMENT_NAME,
            "artifact_location": "mlflow-artifacts:/0", "lifecycle_stage": "active", "tags": []}


def named(s: Session, name: str) -> Sweep | None:
    return s.scalars(select(Sweep).where(Sweep.kind == SweepKind.EXTERNAL.value, Sweep.name == name)
                     .order_by(Sweep.id.desc()).limit(1)).first()


def sweep_for(s: Session, experiment_id: str) -> Sweep | None:
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return named(s, DEFAULT_EXPERIMENT_NAME)
    sweep_id = row_id(experiment_id)
    return s.get(Sweep, sweep_id) if sweep_id is not None else None


def get_experiment(engine: Engine, experiment_id: str) -> dict[str, Any]:
    with read_session(engine) as s:
        sweep = sweep_for(s, experiment_id)
    if sweep is None:
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            return _virtual_default()
        raise ExperimentNotFound(experiment_id)
    return _experiment_json(sweep)


def get_experiment_by_name(engine: Engine, name: str) -> dict[str, Any]:
    """The experiment of NAME as create_experiment keeps it (stripped)."""
    stored = name.strip()
    with read_session(engine) as s:
        sweep = named(s, stored) if stored and "\x00" not in stored else None  # PostgreSQL refuses a NUL
    if sweep is None:
        raise NotFound(f"experiment {name[:200]!r} not found")
    return _experiment_json(sweep)


def create_experiment(engine: Engine, name: str, tags: dict[str, str]) -> str:
    """A new external sweep named NAME; RESOURCE_ALREADY_EXISTS when one is."""
    name = check_text(name.strip(), "name", 200)
    if not name:
        raise InvalidSpec("name: must not be blank", fields=[{"loc": "name", "msg": "must not be blank"}])
    with write_session(engine) as s:
        external._lock(s)
        if named(s, name) is not None:
            raise AlreadyExists(f"experiment {name!r} already exists")
        sweep = external._find_or_create_sweep(s, external.ExternalRunRequest(sweep=name, config={}, seed=0))
        if tags:
            sweep.spec = {**sweep.spec, "tags": dict(tags)}
        return _experiment_id(sweep)


def search_experiments(engine: Engine, filter_text: str | None, order_by: Sequence[str], max_results: int,
                       page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """External sweeps (MLflow's experiments), newest first unless ordered otherwise."""
    clauses = parse_filter(filter_text, EXPERIMENT_ATTRIBUTES)
    order = parse_order(order_by, EXPERIMENT_ATTRIBUTES)
    with read_session(engine) as s:
        sweeps = list(s.scalars(select(Sweep).where(Sweep.kind == SweepKind.EXTERNAL.value)
                                .order_by(Sweep.id.desc())))
    rows = []
    for sweep in sweeps:
        js = _experiment_json(sweep)
        row = Row(tags={t["key"]: t["value"] for t in js["tags"]},
                  attributes={"name": sweep.name, "experiment_id": js["experiment_id"], "lifecycle_stage": "active",
                              "creation_time": js["creation_time"], "last_update_time": js["last_update_time"]})
        row.attributes["json"] = js
        if matches(row, clauses):
            rows.append(row)
    rows = sort_rows(rows, order)
    return page([r.attributes["json"] for r in rows], max_results, page_token)
