"""MLflow's runs are sweeplab's external runs (app/api/mlflow.py answers them over HTTP; experiments,
the external sweeps they belong to: app/services/mlflow_experiments.py).

**MLflow runs are external runs** (`source='external'`, app/services/external.py): the run id is
the run's id as text. Like every external run, one silent for SWEEPLAB_EXTERNAL_STALE_SECONDS (no
write at all) is ended failed by the reaper; any write to a running run counts as a heartbeat.
Writes to a run that ended are INVALID_STATE, except tags (MLflow allows them on finished runs).

**Params are the config; the param (or tag) `seed` is the replicate.** MLflow creates a run
before any param is logged, and params may come in several requests (autolog logs fit()'s
arguments, then the optimizer's, then early stopping's). So a run starts in the config of the
params it has (none yet: the config `{}`, labelled "base") and moves, in the transaction that
stores new params, to the config of all its params so far, found or created by content hash as
every external config is; the config it left is deleted when no run is left in it, so pending
runs leave nothing behind. A param never changes once logged (MLflow's own rule: another value
for a logged key is INVALID_PARAMETER_VALUE), so a run only moves towards more params, and runs
with equal params end in one config whatever order they logged them in: they are replicates,
with the bands, verdicts and reports of any other config. Metric rows belong to the run, not to
the config, so a move touches none: each epoch is stored once, and no run is ever made twice by
a move. A param's text becomes a number in the config when it reads back as the same text
("32", "0.001"; not "1e-3" or "007"), so MLflow's configs compare with sweeplab's and get-run
answers exactly the text logged. The seed must be a whole number; until one is logged a run's
seed is 0. (The seed param's text is kept in the run's tags under `sweeplab.seed_param`, which
answers hide; tags under `sweeplab.` are the server's.)

**A metric's step is its epoch** (a retried step > 0 stores nothing: ON CONFLICT DO NOTHING).
MLflow's Python client sends step 0 when none is given, so a step of 0 (or none) goes to epoch 0
while that epoch of the key is free, and otherwise to the next epoch of that key, unless the
point's client timestamp is no later than that of the key's latest such point of an earlier
request: that is a retried request (the client retries on 5xx and lost connections), and it
stores nothing. (That timestamp is kept per key in the run's tags under `sweeplab.stepless`; a
point without a timestamp is always new, except an explicit step 0, which is epoch 0.) Keras'
autolog logs its 0-based epoch index as the step, so a fit of N epochs reads as epochs 0..N-1,
as MLflow shows it. A key is stored by sweeplab's name for it (app.metrics.keras_key:
`epoch_loss` is `loss`). NaN is stored as null, infinities as such; answers give "NaN" and
"Infinity" back.

**Statuses**: RUNNING, FINISHED (succeeded; cancelled when a stop was asked), FAILED, KILLED
(cancelled); a queued run reads as SCHEDULED, a pruned one as KILLED.

Concurrency: a write to a run first takes the run's row (the conditioned UPDATE of heartbeat_at,
as an external epoch does), so two requests for one run serialise and a reaper racing them wins
or loses whole; config find-or-create and the orphan delete run under external runs' lock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.db import db_now, dialect_insert, read_session, write_session
from app.errors import InvalidSpec, InvalidTransition, NotFound
from app.metrics import keras_key
from app.models import Config, Metric, Run, RunEvent, RunSource, RunStatus, Sweep, SweepKind, metric_value
from app.services import external
from app.services.mlflow_experiments import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    ExperimentNotFound,
    ms,
    sweep_for,
)
from app.services.mlflow_search import Row, matches, page, parse_filter, parse_order, sort_rows

SEED = "seed"
RESERVED_TAG_PREFIX = "sweeplab."
SEED_PARAM_TAG = "sweeplab.seed_param"
STEPLESS_TAG = "sweeplab.stepless"  # per key, the latest client timestamp of a point logged without a step
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
EXTERNAL = RunSource.EXTERNAL.value
RUNNING = RunStatus.RUNNING.value
MAX_EPOCH = 100_000  # as an external run's epochs
MAX_SEED = 2**63 - 1
MAX_TAGS_PER_RUN = 1000
MAX_TAGS_CHARS = 200_000  # a run's tags as JSON
MAX_HISTORY = 100_001  # every epoch of one key

TO_MLFLOW_STATUS = {RunStatus.QUEUED.value: "SCHEDULED", RunStatus.RUNNING.value: "RUNNING",
                    RunStatus.SUCCEEDED.value: "FINISHED", RunStatus.FAILED.value: "FAILED",
                    RunStatus.CANCELLED.value: "KILLED", RunStatus.PRUNED.value: "KILLED"}
FROM_MLFLOW_STATUS = {"FINISHED": RunStatus.SUCCEEDED, "FAILED": RunStatus.FAILED, "KILLED": RunStatus.CANCELLED}
RUN_ATTRIBUTES = frozenset({"run_id", "run_name", "status", "user_id", "experiment_id", "artifact_uri",
                            "lifecycle_stage", "start_time", "end_time"})


class RunNotFound(NotFound):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id[:100]!r} not found")


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float  # NaN and infinities included
    step: int | None  # None: not given
    timestamp: int | None = None  # the client's, in ms


# ---- values -----------------------------------------------------------------------------------

def param_value(text: str) -> Any:
    """A param's text as the config holds it: a number when it reads back as the same text."""
    stripped = text.strip()
    if stripped != text or not stripped:
        return text
    try:
        number = int(text)
    except ValueError:
        pass
    else:
        return number if str(number) == text and abs(number) < 2**53 else text
    try:
        real = float(text)
    except ValueError:
        return text
    return real if math.isfinite(real) and repr(real) == text else text


def param_text(value: Any) -> str:
    """A config value as MLflow's param text (the inverse of param_value for what it made)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def metric_json(value: float | None) -> float | str:
    """A stored value as MLflow's JSON carries it: NaN (stored null) and infinities as text."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def parse_seed(text: str, where: str) -> int:
    try:
        seed = int(text.strip())
    except ValueError:
        raise InvalidSpec(f"{where}: the seed names a replicate and must be a whole number, not {text[:50]!r}",
                          fields=[{"loc": where, "msg": "must be a whole number"}]) from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidSpec(f"{where}: the seed must be between 0 and {MAX_SEED}")
    return seed


def parse_run_id(run_id: str | None) -> int:
    if not run_id:
        raise InvalidSpec("run_id: required", fields=[{"loc": "run_id", "msg": "required"}])
    if not run_id.isdigit() or len(run_id) > 18:
        raise RunNotFound(run_id)
    return int(run_id)


# ---- runs: reading ----------------------------------------------------------------------------

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


def _info(run: Run) -> dict[str, Any]:
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
    return {"info": _info(run),
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
        rows = s.execute(select(Metric.epoch, Metric.value, Metric.created_at)
                         .where(Metric.run_id == rid, Metric.key == keras_key(key))
                         .order_by(Metric.epoch).limit(MAX_HISTORY)).all()
    return [{"key": keras_key(key), "value": metric_json(r.value), "timestamp": ms(r.created_at), "step": r.epoch}
            for r in rows]


# ---- runs: writing ----------------------------------------------------------------------------

def create_run(engine: Engine, experiment_id: str | None, user_id: str | None, run_name: str | None,
               tags: dict[str, str], max_runs: int) -> dict[str, Any]:
    """A running external run in the experiment's sweep, in the config of no params (yet)."""
    eid = experiment_id or DEFAULT_EXPERIMENT_ID
    tags = dict(tags)
    if run_name:
        tags[RUN_NAME_TAG] = run_name
    if user_id and USER_TAG not in tags:
        tags[USER_TAG] = user_id
    _check_tag_keys(tags)
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


def _writable(s: Session, run_id: int, what: str) -> Run:
    """The run, running and external, with its heartbeat renewed (its row now held)."""
    touched = s.execute(update(Run).where(Run.id == run_id, Run.source == EXTERNAL, Run.status == RUNNING)
                        .values(heartbeat_at=db_now()).returning(Run.id)).first()
    run = s.get(Run, run_id, populate_existing=True)
    if run is None:
        raise RunNotFound(str(run_id))
    if touched is None:
        if run.source != EXTERNAL:
            raise InvalidSpec(f"run {run_id} is trained by sweeplab's workers; it takes no {what} from MLflow")
        reason = f" ({run.error})" if run.error else ""
        raise InvalidTransition(f"run {run_id} already {run.status}{reason}; it takes no more {what}")
    return run


def _tagged(s: Session, run_id: int) -> Run:
    """The external run (any status), its row held, for a change of tags."""
    run = s.scalars(select(Run).where(Run.id == run_id).with_for_update()).first()
    if run is None:
        raise RunNotFound(str(run_id))
    if run.source != EXTERNAL:
        raise InvalidSpec(f"run {run_id} is trained by sweeplab's workers; it takes no tags from MLflow")
    return run


def _check_tag_keys(tags: dict[str, str]) -> None:
    for key in tags:
        if key.startswith(RESERVED_TAG_PREFIX):
            raise InvalidSpec(f"tags.{key}: tags under {RESERVED_TAG_PREFIX!r} are the server's",
                              fields=[{"loc": f"tags.{key}", "msg": "reserved"}])


def _store_tags(s: Session, run: Run, tags: dict[str, str]) -> None:
    if not tags:
        return
    _check_tag_keys(tags)
    merged = {**(run.tags or {}), **tags}
    if len(merged) > MAX_TAGS_PER_RUN or len(json.dumps(merged)) > MAX_TAGS_CHARS:
        raise InvalidSpec(f"tags: a run holds at most {MAX_TAGS_PER_RUN} tags, {MAX_TAGS_CHARS} characters in all")
    if SEED in tags and SEED_PARAM_TAG not in merged:
        if run.status != RUNNING:
            raise InvalidTransition(f"run {run.id} already {run.status}; its seed is settled")
        run.seed = parse_seed(tags[SEED], "tags.seed")
    run.tags = merged


def _move_to(s: Session, run: Run, config: dict[str, Any], max_configs: int) -> None:
    """Put RUN in the config of CONFIG (found or made); delete the config it leaves if now empty."""
    external._lock(s)
    cfg = external._find_or_create_config(s, run.sweep_id, external.check_config(config), max_configs)
    if cfg.id == run.config_id:
        return
    left = run.config_id
    run.config_id = cfg.id
    s.flush()
    if not s.scalar(select(func.count()).select_from(Run).where(Run.config_id == left)):
        s.execute(delete(Config).where(Config.id == left))


def _store_params(s: Session, run: Run, params: dict[str, str], max_configs: int) -> None:
    if not params:
        return
    config = s.get(Config, run.config_id)
    assert config is not None
    have = dict(config.params or {})
    merged = dict(have)
    tags = dict(run.tags or {})
    for key, text in params.items():
        if key == SEED:
            old = tags.get(SEED_PARAM_TAG)
            if old is not None and str(old) != text:
                raise InvalidSpec(f"params.seed: already logged as {old!r} for run {run.id}; params never change",
                                  fields=[{"loc": "params.seed", "msg": "already logged with another value"}])
            run.seed = parse_seed(text, "params.seed")
            tags[SEED_PARAM_TAG] = text
            run.tags = dict(tags)
            continue
        if key in have and param_text(have[key]) != text:
            raise InvalidSpec(f"params.{key}: already logged as {param_text(have[key])[:100]!r} for run {run.id}; "
                              "params never change (MLflow's rule)",
                              fields=[{"loc": f"params.{key}", "msg": "already logged with another value"}])
        merged[key] = param_value(text)
    if merged != have:
        _move_to(s, run, merged, max_configs)


def _store_metrics(s: Session, run: Run, points: Sequence[MetricPoint]) -> int:
    """Store POINTS (see the module's "A metric's step is its epoch"); the rows newly stored."""
    if not points:
        return 0
    points = [MetricPoint(keras_key(p.key), p.value, p.step, p.timestamp) for p in points]
    stepless = {p.key for p in points if not p.step}
    span: dict[str, tuple[int, int]] = {}
    if stepless:
        span = {k: (lo, hi) for k, lo, hi in s.execute(
            select(Metric.key, func.min(Metric.epoch), func.max(Metric.epoch))
            .where(Metric.run_id == run.id, Metric.key.in_(stepless)).group_by(Metric.key)).all()}
    tags = dict(run.tags or {})
    seen: dict[str, int] = dict(tags.get(STEPLESS_TAG) or {})  # latest client timestamp of a stepless point
    before = dict(seen)
    rows: dict[tuple[str, int], float | None] = {}
    for p in points:
        if p.step:
            epoch = p.step
        else:
            lo, hi = span.get(p.key, (None, None))
            last_seen = before.get(p.key)
            if lo != 0:  # epoch 0 of the key is free
                epoch = 0
            elif p.timestamp is None:
                epoch = 0 if p.step == 0 else (hi or 0) + 1  # no timestamp: an explicit 0 is epoch 0
            elif last_seen is not None and p.timestamp <= last_seen:
                continue  # logged before (a retried request)
            else:
                epoch = (hi or 0) + 1
            span[p.key] = (0, max(epoch, hi or 0))
            if p.timestamp is not None:
                seen[p.key] = max(p.timestamp, seen.get(p.key, p.timestamp))
        if epoch > MAX_EPOCH:
            raise InvalidSpec(f"metrics.{p.key}: epoch {epoch} is past the last one stored ({MAX_EPOCH})")
        rows.setdefault((p.key, epoch), metric_value(p.value))
    if seen != before:
        tags[STEPLESS_TAG] = seen
        run.tags = tags
    if not rows:
        return 0
    values = [{"run_id": run.id, "key": k, "epoch": e, "value": v, "created_at": db_now()}
              for (k, e), v in rows.items()]
    stored = len(s.execute(dialect_insert(s)(Metric).values(values)
                           .on_conflict_do_nothing(index_elements=["run_id", "key", "epoch"])
                           .returning(Metric.id)).all())
    top = max(e for _, e in rows)
    if top > run.last_epoch:
        s.execute(update(Run).where(Run.id == run.id, Run.last_epoch < top).values(last_epoch=top))
    return stored


def log_batch(engine: Engine, run_id: str, metrics: Sequence[MetricPoint], params: dict[str, str],
              tags: dict[str, str], max_configs: int) -> int:
    """Params, then tags, then metrics of one run, in one transaction; the metric rows stored."""
    rid = parse_run_id(run_id)
    with write_session(engine) as s:
        if not metrics and not params and tags:
            return _set_tags(s, rid, tags)
        what = "metrics" if metrics else "params" if params else "writes"
        run = _writable(s, rid, what)
        _store_params(s, run, params, max_configs)
        _store_tags(s, run, tags)
        return _store_metrics(s, run, metrics)


def _set_tags(s: Session, run_id: int, tags: dict[str, str]) -> int:
    run = _tagged(s, run_id)
    if run.status == RUNNING:
        s.execute(update(Run).where(Run.id == run_id, Run.status == RUNNING).values(heartbeat_at=db_now()))
    _store_tags(s, run, tags)
    return 0


def delete_tag(engine: Engine, run_id: str, key: str) -> None:
    rid = parse_run_id(run_id)
    _check_tag_keys({key: ""})
    with write_session(engine) as s:
        run = _tagged(s, rid)
        tags = dict(run.tags or {})
        if key not in tags:
            raise NotFound(f"run {rid} has no tag {key[:250]!r}")
        del tags[key]
        run.tags = tags
        if key == SEED and SEED_PARAM_TAG not in tags and run.status == RUNNING:
            run.seed = 0


def update_run(engine: Engine, run_id: str, status: str | None, run_name: str | None) -> dict[str, Any]:
    """Rename the run and/or end it (FINISHED, FAILED, KILLED); RUNNING keeps it running."""
    rid = parse_run_id(run_id)
    if status is not None and status not in FROM_MLFLOW_STATUS and status != "RUNNING":
        raise InvalidSpec(f"status: one of RUNNING, FINISHED, FAILED, KILLED, not {status[:30]!r}",
                          fields=[{"loc": "status", "msg": "one of RUNNING, FINISHED, FAILED, KILLED"}])
    if run_name:
        with write_session(engine) as s:
            _store_tags(s, _tagged(s, rid), {RUN_NAME_TAG: run_name})
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
            _writable(s, rid, "status changes")
    with read_session(engine) as s:
        found = s.get(Run, rid)
    if found is None:
        raise RunNotFound(run_id)
    return _info(found)


def run_exists(engine: Engine, run_id: str) -> None:
    """NotFound unless RUN_ID names a run (routes that accept and drop what they are sent)."""
    rid = parse_run_id(run_id)
    with read_session(engine) as s:
        if s.scalar(select(Run.id).where(Run.id == rid)) is None:
            raise RunNotFound(run_id)
