"""External runs: trainings that happen outside sweeplab's workers (a notebook, a script) and
report over the REST API through `SweeplabCallback`.

They are ordinary rows: a `sweeps` row of kind 'external' (its spec says {"external": true} for
readers of the API), one `configs` row per distinct config dict (its key is the dict's content
hash, so replicates group exactly as queued runs do) and `runs` rows with source 'external', which
the queue never claims. A client-chosen `runs.client_token` makes a retried create return the run
the first attempt made.

Nothing on the server can see whether the client is still alive, so the client tells it: every
epoch and every heartbeat sets `heartbeat_at` (database clock). A run silent for
`external_stale_seconds` is ended by the reaper (`reap_stale_external`): failed, or cancelled when
someone asked it to stop, since a killed process (SIGKILL, out of memory, a lost node) never says
goodbye.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, String, and_, case, cast, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from app.db import db_now, dialect_insert, write_session
from app.errors import InvalidSpec, InvalidTransition, RunNotFound
from app.models import Config, Metric, Run, RunEvent, RunSource, RunStatus, Sweep, SweepKind, metric_value
from app.schemas import RunPublic
from app.services.runs import read_run
from app.spec import content_key, describe_params
from app.text import first_unencodable

EXTERNAL_DATASET = "external"
EXTERNAL = RunSource.EXTERNAL.value
EXTERNAL_LOCK_KEY = 0x5EE9_E87  # pg_advisory_xact_lock key: serialises find-or-create of sweeps/configs
MAX_CONFIG_CHARS = 10_000
MAX_CONFIG_DEPTH = 8
LABEL_CHARS = 500
MAX_HEARTBEAT_SECONDS = 15.0
HEARTBEATS_PER_STALE = 6  # a client misses several heartbeats before its run counts as stale
CANCEL_GRACE_HEARTBEATS = 3
STOPPED_REPORTING = "the client stopped reporting"


def config_chars(config: dict[str, Any]) -> int:
    """A config's size as its limit (MAX_CONFIG_CHARS) counts it: characters as sorted JSON."""
    return len(json.dumps(config, sort_keys=True))


def heartbeat_seconds(stale_seconds: float) -> float:
    """How often a client should send a heartbeat so that a live one is never taken for stale."""
    return min(MAX_HEARTBEAT_SECONDS, stale_seconds / HEARTBEATS_PER_STALE)


def cancel_grace_seconds(stale_seconds: float) -> float:
    """Silence after which a run asked to stop ends cancelled: a live client answers a cancel at its
    next heartbeat, so a few missed heartbeats are enough, well before the full staleness."""
    return min(stale_seconds, CANCEL_GRACE_HEARTBEATS * heartbeat_seconds(stale_seconds))


def check_config(config: Any) -> dict[str, Any]:
    """A config must be a small JSON object of finite numbers, strings, booleans, lists and objects."""
    if not isinstance(config, dict):
        raise InvalidSpec("config: must be a JSON object")
    where = first_unencodable(config, "config")
    if where is not None:
        # Neither database can store a lone surrogate (JSON "\ud800"); unchecked it is a 500.
        message = "text with a lone surrogate character cannot be stored"
        raise InvalidSpec(f"{where}: {message}", fields=[{"loc": where, "msg": message}])

    def walk(node: Any, depth: int, where: str) -> None:
        if depth > MAX_CONFIG_DEPTH:
            raise InvalidSpec(f"config: nested deeper than {MAX_CONFIG_DEPTH} levels at {where}")
        if isinstance(node, float) and not math.isfinite(node):
            raise InvalidSpec(f"config: {where} is not a finite number")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise InvalidSpec(f"config: key {k!r} at {where} is not a string")
                walk(v, depth + 1, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, depth + 1, f"{where}[{i}]")

    walk(config, 0, "config")
    if config_chars(config) > MAX_CONFIG_CHARS:
        raise InvalidSpec(f"config: over {MAX_CONFIG_CHARS} characters as JSON")
    return config


@dataclass(frozen=True)
class ExternalRunRequest:
    """What a client asks for: a run of CONFIG with SEED in the external sweep named SWEEP."""

    sweep: str
    config: dict[str, Any]
    seed: int
    epochs: int = 0
    study: str | None = None
    dataset: str | None = None
    client_token: str | None = None
    host: str | None = None
    provenance: dict[str, Any] | None = None  # checked by the router: a small flat record


def _lock(s: Session) -> None:
    # SQLite writers are already serialised by BEGIN IMMEDIATE; PostgreSQL needs the lock so two
    # notebooks starting together do not both create "my study".
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EXTERNAL_LOCK_KEY})


def _find_or_create_sweep(s: Session, req: ExternalRunRequest) -> Sweep:
    """The newest external sweep with this name (and study), or a new one."""
    dataset = req.dataset or EXTERNAL_DATASET
    q = select(Sweep).where(Sweep.kind == SweepKind.EXTERNAL.value, Sweep.name == req.sweep, Sweep.dataset == dataset)
    q = q.where(Sweep.study == req.study) if req.study is not None else q.where(Sweep.study.is_(None))
    found = s.scalars(q.order_by(Sweep.id.desc()).limit(1)).first()
    if found is not None:
        return found
    spec: dict[str, Any] = {"external": True, "name": req.sweep, "dataset": dataset}
    if req.study is not None:
        spec["study"] = req.study
    sweep = Sweep(kind=SweepKind.EXTERNAL.value, name=req.sweep, study=req.study, dataset=dataset, spec=spec,
                  run_count=0)
    s.add(sweep)
    s.flush()
    return sweep


def _find_or_create_config(s: Session, sweep_id: int, config: dict[str, Any], max_configs: int) -> Config:
    key = content_key(config)
    found = s.scalars(select(Config).where(Config.sweep_id == sweep_id, Config.key == key)
                      .order_by(Config.position)).first()
    if found is not None:
        return found
    last = s.scalar(select(func.max(Config.position)).where(Config.sweep_id == sweep_id))
    if last is not None and last + 1 >= max_configs:
        raise InvalidSpec(f"sweep {sweep_id} already has {last + 1} configs; at most {max_configs} are allowed")
    created = Config(sweep_id=sweep_id, position=(last + 1) if last is not None else 0, key=key,
                     label=describe_params(config)[:LABEL_CHARS], params=config, train=config)
    s.add(created)
    s.flush()
    return created


def _existing_run(s: Session, client_token: str) -> int | None:
    # Whatever its status: a client that creates with the same token again means the same run (an
    # importer run twice finds the runs it finished the first time and imports nothing twice).
    return s.scalar(select(Run.id).where(Run.source == EXTERNAL, Run.client_token == client_token)
                    .order_by(Run.id.desc()).limit(1))


def create_external_run(engine: Engine, req: ExternalRunRequest, max_runs: int) -> tuple[RunPublic, bool]:
    """Join or create the sweep and config, then start a run; (run, created). A create retried
    with the same client_token returns the first attempt's run with created=False."""
    config = check_config(req.config)
    with write_session(engine) as s:
        _lock(s)
        if req.client_token and (run_id := _existing_run(s, req.client_token)) is not None:
            existing = run_id
        else:
            existing = None
            sweep = _find_or_create_sweep(s, req)
            n = s.scalar(select(func.count()).select_from(Run).where(Run.sweep_id == sweep.id)) or 0
            if n >= max_runs:
                raise InvalidSpec(f"sweep {sweep.id} already has {n} runs; this server accepts at most {max_runs}")
            cfg = _find_or_create_config(s, sweep.id, config, max_runs)
            run_id = s.execute(insert(Run).values(
                sweep_id=sweep.id, config_id=cfg.id, seed=req.seed, status=RunStatus.RUNNING.value,
                source=EXTERNAL, attempt=1, max_attempts=1, epochs=req.epochs, last_epoch=-1,
                cancel_requested=False, worker_id=req.host, client_token=req.client_token, provenance=req.provenance,
                created_at=db_now(), started_at=db_now(), heartbeat_at=db_now(), train_seconds=0.0,
            ).returning(Run.id)).scalar_one()
            s.execute(update(Sweep).where(Sweep.id == sweep.id).values(run_count=n + 1))
            s.add(RunEvent(run_id=run_id, kind="started", worker_id=req.host, message="external run"))
    return read_run(engine, existing if existing is not None else run_id), existing is None


def _external_run(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    if run.source != EXTERNAL:
        raise InvalidTransition(f"run {run_id} is trained by sweeplab's workers; only external runs "
                                "(created by POST /api/external/runs) accept epochs, heartbeats and finish")
    return run


def _touch(s: Session, run_id: int, what: str) -> bool:
    """Set the run's heartbeat_at if it is an external run still running; its cancel_requested.

    One conditioned UPDATE, so it cannot interleave with the reaper's: it takes the row lock
    (PostgreSQL) or runs under the write lock (SQLite) for the rest of the transaction. Either it
    lands first and the run is no longer stale, or the reaper ended the run first and this is a 409.
    """
    cancel = s.scalar(update(Run).where(Run.id == run_id, Run.source == EXTERNAL,
                                        Run.status == RunStatus.RUNNING.value)
                      .values(heartbeat_at=db_now()).returning(Run.cancel_requested))
    if cancel is None:
        run = _external_run(s, run_id)
        reason = f" ({run.error})" if run.error else ""
        raise InvalidTransition(f"run {run_id} already {run.status}{reason}; it accepts no more {what}")
    return bool(cancel)


@dataclass(frozen=True)
class EpochAck:
    run_id: int
    epoch: int
    stored: int  # metric rows newly stored: 0 when the post was a retry
    cancel_requested: bool


def record_external_epoch(engine: Engine, run_id: int, epoch: int, metrics: Mapping[str, float | None],
                          seconds: float = 0.0) -> EpochAck:
    """Store one epoch's metrics; idempotent on (run, key, epoch): a retried post stores nothing
    and adds no seconds. Values are stored as a worker's are (app.models.metric_value: inf as
    itself, NaN as NULL). An epoch is also a heartbeat."""
    with write_session(engine) as s:
        cancel = _touch(s, run_id, "epochs")
        values = [{"run_id": run_id, "key": k, "epoch": epoch, "created_at": db_now(),
                   "value": metric_value(v)}
                  for k, v in metrics.items()]
        stored = 0
        if values:
            stored = len(s.execute(dialect_insert(s)(Metric).values(values)
                                   .on_conflict_do_nothing(index_elements=["run_id", "key", "epoch"])
                                   .returning(Metric.id)).all())
        s.execute(update(Run).where(Run.id == run_id).values(
            last_epoch=case((Run.last_epoch < epoch, epoch), else_=Run.last_epoch),
            train_seconds=Run.train_seconds + (seconds if stored else 0.0)))
    return EpochAck(run_id, epoch, stored, cancel)


@dataclass(frozen=True)
class HeartbeatAck:
    run_id: int
    cancel_requested: bool


def heartbeat_external_run(engine: Engine, run_id: int) -> HeartbeatAck:
    """The client is alive (a long epoch is under way): the run is not stale. 409 once it ended."""
    with write_session(engine) as s:
        cancel = _touch(s, run_id, "heartbeats")
    return HeartbeatAck(run_id, cancel)


def finish_external_run(engine: Engine, run_id: int, status: RunStatus, error: str | None = None) -> RunPublic:
    """End an external run. Succeeded after a cancel request ends it cancelled. Finishing again
    with the same status answers the run unchanged; another status (or a run the reaper already
    ended) is a 409."""
    if status not in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
        raise InvalidTransition("status must be succeeded, failed or cancelled")
    final: Any = status.value
    if status == RunStatus.SUCCEEDED:
        final = case((Run.cancel_requested.is_(True), RunStatus.CANCELLED.value), else_=status.value)
    with write_session(engine) as s:
        # One conditioned UPDATE: a reaper ending the run at the same moment wins or loses whole.
        row = s.execute(update(Run).where(Run.id == run_id, Run.source == EXTERNAL,
                                          Run.status == RunStatus.RUNNING.value)
                        .values(status=final, error=error, finished_at=db_now())
                        .returning(Run.status, Run.worker_id)).first()
        if row is not None:
            s.add(RunEvent(run_id=run_id, kind=row.status, worker_id=row.worker_id, message=error))
        else:
            run = _external_run(s, run_id)
            repeated = RunStatus.CANCELLED if run.cancel_requested and status == RunStatus.SUCCEEDED else status
            if run.status != repeated.value:
                reason = f" ({run.error})" if run.error else ""
                raise InvalidTransition(f"run {run_id} already {run.status}{reason}")
    return read_run(engine, run_id)


@dataclass
class StaleResult:
    failed: list[int]
    cancelled: list[int]


def _silent_for(seconds: float) -> Any:
    """Runs still running, external, with no epoch or heartbeat for SECONDS (database clock)."""
    last = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)
    return and_(Run.status == RunStatus.RUNNING.value, Run.source == EXTERNAL, last < db_now() - seconds)


def _silence_text(prefix: str) -> Any:
    """PREFIX + how long the run has been silent, computed by the database in the same UPDATE."""
    last = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)
    return literal(prefix, String) + cast(cast(db_now() - last, Integer), String) + literal(" s", String)


SILENT = f"{STOPPED_REPORTING}: no epoch or heartbeat for "
SILENT_AFTER_CANCEL = f"{STOPPED_REPORTING} after it was asked to stop: no epoch or heartbeat for "


def reap_stale_external(engine: Engine, stale_seconds: float) -> StaleResult:
    """End external runs whose client stopped reporting: cancelled when a stop was asked (after a
    few missed heartbeats), else failed after STALE_SECONDS of silence. Each is one UPDATE
    conditioned on status and silence, so an epoch or heartbeat racing it either lands first (and
    the run is not stale) or gets a 409; two reapers at once end each run once."""
    grace = cancel_grace_seconds(stale_seconds)
    with write_session(engine) as s:
        cancelled = list(s.scalars(
            update(Run).where(_silent_for(grace), Run.cancel_requested.is_(True))
            .values(status=RunStatus.CANCELLED.value, finished_at=db_now(),
                    error=_silence_text(SILENT_AFTER_CANCEL))
            .returning(Run.id)))
        failed = list(s.scalars(
            update(Run).where(_silent_for(stale_seconds))
            .values(status=RunStatus.FAILED.value, finished_at=db_now(),
                    error=_silence_text(SILENT))
            .returning(Run.id)))
        for ids, kind in ((cancelled, RunStatus.CANCELLED.value), (failed, RunStatus.FAILED.value)):
            for run_id in ids:
                s.add(RunEvent(run_id=run_id, kind=kind, message=STOPPED_REPORTING))
    return StaleResult(failed, cancelled)
