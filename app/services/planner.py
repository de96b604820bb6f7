"""The planner of adaptive sweeps: THE one place that adds configs and runs to a sweep after submit.

`plan(engine, sweep_id)` runs one transaction under the sweep's lock (`sweep_lock`): PostgreSQL locks
the sweep's row (SELECT ... FOR NO KEY UPDATE: planners of one sweep take turns, while inserts of its
runs, whose foreign keys only share-lock the row, never wait on it); SQLite's write transaction is
already exclusive (BEGIN IMMEDIATE, app.db.write_session). Under the lock it reads what the sweep has
and adds what is missing, so any number of planners (threads, workers, the server) asking at once
create each config and seed once; a planner killed mid-way rolls back and leaves nothing half-done.
Before it locks it looks in a read-only session whether anything may be added (room for a config,
seeds a race wants), so planners with nothing to do never wait for, nor hold, the write lock.

What it adds:
- a race (`race` with replicates {min, max, step}): the seeds app.services.racing.next_seeds answers
  for its configs (a config's new seeds follow its largest seed);
- a search (method random or tpe): new configs drawn by app.services.search while fewer than
  (live workers + SEARCH_HEADROOM) of its configs have runs queued or running, up to max_configs; so
  configs are made as work frees up and later ones learn from earlier ones.
A sweep with a cancelled run (or a cancel asked of a running one) gets nothing more until retried.

Who calls it: create_sweep (the first configs, in the sweep's own transaction), a worker after each
pack and when it finds the queue empty (`plan_pending`), and the server's reaper timer (`plan_pending`,
the backstop for a worker that died between finishing a run and planning).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, exists, func, insert, or_, select
from sqlalchemy.orm import Session

from app.db import db_now, read_session, write_session
from app.models import Config, Run, RunSource, RunStatus, Sweep, SweepKind, Worker
from app.packing import pack_key
from app.services.stored_spec import searches_or_races
from app.services.stored_spec import stored_spec as read_stored_spec
from app.spec import ExpandedConfig, SweepSpec, describe_params

log = logging.getLogger("sweeplab.planner")
SEARCH_HEADROOM = 2  # configs in flight beyond one per live worker
DEAD_AFTER_LEASES = 3  # as app.services.workers: a worker silent this many leases is gone
DEFAULT_MAX_ATTEMPTS = 3
PENDING_WINDOW_SECONDS = 7 * 24 * 3600.0  # plan_pending looks at adaptive sweeps active this recently
QUEUED, RUNNING, CANCELLED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.CANCELLED.value


@dataclass(frozen=True)
class PlanResult:
    """What one plan added to a sweep."""

    sweep_id: int
    new_configs: list[int] = field(default_factory=list)  # ids of the configs created, in position order
    new_runs: int = 0  # runs created (seeds of new configs and new seeds of a race)

    @property
    def changed(self) -> bool:
        return self.new_runs > 0


def sweep_lock(session: Session, sweep_id: int) -> Sweep | None:
    """The sweep's row, locked against other planners until SESSION's transaction ends (None if no
    such sweep). SESSION must be a write session (app.db.write_session): on SQLite its BEGIN IMMEDIATE
    is the lock."""
    query = select(Sweep).where(Sweep.id == sweep_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE
    return session.scalars(query).first()


def stored_spec(sweep: Sweep) -> SweepSpec | None:
    """The spec of a queued sweep, if it is adaptive (None for a grid sweep, an external one, or a spec
    this version cannot read: app.services.stored_spec)."""
    spec = read_stored_spec(sweep, searches_or_races)
    return spec if spec is not None and spec.adaptive else None


def plan(engine: Engine, sweep_id: int, *, lease_seconds: float = 60.0) -> PlanResult:
    """Add the configs and seeds the sweep needs now (nothing for a grid sweep or one that is done)."""
    with read_session(engine) as s:  # a look without the write lock: most calls have nothing to do
        peek = s.get(Sweep, sweep_id)
        spec = stored_spec(peek) if peek is not None else None
    if spec is None or not _worth_locking(engine, sweep_id, spec, lease_seconds):
        return PlanResult(sweep_id)
    prepare(spec)
    with write_session(engine) as s:
        return plan_locked(s, sweep_id, spec, lease_seconds=lease_seconds)


def _worth_locking(engine: Engine, sweep_id: int, spec: SweepSpec, lease_seconds: float) -> bool:
    """Whether a plan may add something now, by a look without the lock (decided again under it): a
    planner with nothing to do (a finished race, a search at max_configs or with no room) never waits
    for the write lock, nor holds it."""
    with read_session(engine) as s:
        if spec.searching:
            made = s.scalar(select(func.count()).select_from(Config).where(Config.sweep_id == sweep_id)) or 0
            if made < (spec.max_configs or 0) and _room(s, sweep_id, lease_seconds) > 0:
                return True
        if spec.race is not None and _ended(s, sweep_id):
            sweep = s.get(Sweep, sweep_id)
            configs = list(s.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)))
            if sweep is not None and configs:
                return any(n > 0 for _, n in _racing().next_seeds(s, sweep, configs))
    return False


def _stopped(session: Session, sweep_id: int) -> bool:
    """Whether a cancel stopped the sweep (a run cancelled, or a cancel asked of a live one): plan
    adds nothing to it until it is retried."""
    return bool(session.scalar(select(exists().where(Run.sweep_id == sweep_id, or_(
        Run.status == CANCELLED, and_(Run.status.in_([QUEUED, RUNNING]), Run.cancel_requested.is_(True)))))))


def _ended(session: Session, sweep_id: int) -> bool:
    """Whether some run of the sweep has ended (a race decides on ended runs only)."""
    return bool(session.scalar(select(exists().where(Run.sweep_id == sweep_id,
                                                     Run.status.not_in([QUEUED, RUNNING])))))


def _racing() -> Any:
    return importlib.import_module("app.services.racing")  # helper "race"'s module, imported when a race plans


def _room(session: Session, sweep_id: int, lease_seconds: float) -> int:
    """How many more configs a search may have in flight: live workers + SEARCH_HEADROOM, less the
    configs with runs queued or running."""
    in_flight = int(session.scalar(select(func.count(func.distinct(Run.config_id)))
                                   .where(Run.sweep_id == sweep_id, Run.status.in_([QUEUED, RUNNING]))) or 0)
    return live_worker_count(session, lease_seconds) + SEARCH_HEADROOM - in_flight


def prepare(spec: SweepSpec) -> None:
    """Imports a plan of SPEC needs, done before its transaction: Optuna's takes a good part of a second,
    which the write lock should not wait for."""
    if spec.method == "tpe":
        import optuna  # noqa: F401


def live_worker_count(session: Session, lease_seconds: float) -> int:
    return int(session.scalar(select(func.count()).select_from(Worker)
                              .where(Worker.heartbeat_at >= db_now() - DEAD_AFTER_LEASES * lease_seconds)) or 0)


def plan_locked(session: Session, sweep_id: int, spec: SweepSpec, *, lease_seconds: float = 60.0,
                max_attempts: int | None = None) -> PlanResult:
    """The plan itself, in SESSION's write transaction (create_sweep calls it in the one that makes
    the sweep). Takes the sweep's lock first."""
    sweep = sweep_lock(session, sweep_id)
    if sweep is None:
        return PlanResult(sweep_id)
    if _stopped(session, sweep_id):
        return PlanResult(sweep_id)
    configs = list(session.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)))
    if max_attempts is None:
        max_attempts = session.scalar(select(func.max(Run.max_attempts)).where(Run.sweep_id == sweep_id)) \
            or DEFAULT_MAX_ATTEMPTS
    new_runs = 0
    if spec.race is not None and configs and _ended(session, sweep_id):
        new_runs += _add_seeds(session, sweep, spec, configs, max_attempts)
    new_configs: list[int] = []
    if spec.searching and len(configs) < (spec.max_configs or 0):
        wanted = min(_room(session, sweep_id, lease_seconds), (spec.max_configs or 0) - len(configs))
        if wanted > 0:
            from app.services.search import next_configs

            for position, cfg in enumerate(next_configs(session, spec, configs, wanted), start=len(configs)):
                config = _add_config(session, sweep_id, position, cfg)
                new_configs.append(config.id)
                new_runs += _add_runs(session, sweep_id, config.id, cfg.train.epochs, cfg.train.program,
                                      spec.seed_list(), max_attempts)
    if new_runs:
        log.info("sweep %d: planned %d new configs, %d new runs", sweep_id, len(new_configs), new_runs)
    return PlanResult(sweep_id, new_configs, new_runs)


def _add_config(session: Session, sweep_id: int, position: int, cfg: ExpandedConfig) -> Config:
    """A config stored as a grid's is (app.services.sweeps.create_sweep): params the dotted-path values,
    train the full settings they give, key their content key, label their description."""
    config = Config(sweep_id=sweep_id, position=position, key=cfg.key, label=describe_params(cfg.params),
                    params=cfg.params, train=cfg.train.model_dump(mode="json"), pack_key=pack_key(cfg.train))
    session.add(config)
    session.flush()
    return config


def run_rows(sweep_id: int, config_id: int, epochs: int, program: str | None, seeds: Sequence[int],
             max_attempts: int) -> list[dict[str, Any]]:
    """The rows of queued runs of one config, one per seed (what create_sweep inserts too)."""
    return [{"sweep_id": sweep_id, "config_id": config_id, "seed": seed, "epochs": epochs,
             "max_attempts": max_attempts, "program": program, "status": QUEUED, "source": RunSource.QUEUE.value,
             "attempt": 0, "last_epoch": -1, "cancel_requested": False, "train_seconds": 0.0,
             "created_at": db_now()} for seed in seeds]


def _add_runs(session: Session, sweep_id: int, config_id: int, epochs: int, program: str | None,
              seeds: Sequence[int], max_attempts: int) -> int:
    rows = run_rows(sweep_id, config_id, epochs, program, seeds, max_attempts)
    if rows:
        key = session.scalar(select(Config.pack_key).where(Config.id == config_id))  # the claim packs by it
        session.execute(insert(Run).values([{**row, "pack_key": key} for row in rows]))
    return len(rows)


def _add_seeds(session: Session, sweep: Sweep, spec: SweepSpec, configs: list[Config], max_attempts: int) -> int:
    """The race's new seeds: each config's next seeds after its largest, never past max replicates."""
    asked: list[tuple[int, int]] = list(_racing().next_seeds(session, sweep, configs))
    if not asked:
        return 0
    by_id = {c.id: c for c in configs}
    held = dict(session.execute(select(Run.config_id, func.count()).where(Run.sweep_id == sweep.id)
                                .group_by(Run.config_id)).all())
    top = dict(session.execute(select(Run.config_id, func.max(Run.seed)).where(Run.sweep_id == sweep.id)
                               .group_by(Run.config_id)).all())
    epochs = dict(session.execute(select(Run.config_id, func.max(Run.epochs)).where(Run.sweep_id == sweep.id)
                                  .group_by(Run.config_id)).all())
    added = 0
    for config_id, n in asked:
        config = by_id.get(config_id)
        if config is None or n <= 0:
            continue
        n = min(n, spec.max_replicates() - int(held.get(config_id, 0)))
        if n <= 0:
            continue
        first = int(top.get(config_id, -1)) + 1
        train_epochs = int(epochs.get(config_id) or config.train.get("epochs", 1))
        added += _add_runs(session, sweep.id, config_id, train_epochs, config.train.get("program"),
                           range(first, first + n), max_attempts)
    return added


def more_to_come(session: Session, sweep_id: int) -> bool:
    """Whether the planner would still add configs or seeds to the sweep (asked once its runs have all
    ended, read-only): a search below max_configs with a new valid config left to draw (the same draw
    plan would make), or a race that wants more seeds. False for a grid sweep, an external one, and a
    sweep a cancel stopped (plan adds nothing to those)."""
    sweep = session.get(Sweep, sweep_id)
    spec = stored_spec(sweep) if sweep is not None else None
    if sweep is None or spec is None:
        return False
    if _stopped(session, sweep_id):
        return False
    configs = list(session.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)))
    if spec.race is not None and configs and _ended(session, sweep_id):
        if any(n > 0 for _, n in _racing().next_seeds(session, sweep, configs)):
            return True
    if spec.searching and len(configs) < (spec.max_configs or 0):
        from app.services.search import next_configs

        prepare(spec)
        return bool(next_configs(session, spec, configs, 1))
    return False


def pending_sweeps(engine: Engine) -> list[int]:
    """Adaptive queued sweeps that may need a plan: nothing of theirs queued now, and created or with a
    run finished within PENDING_WINDOW_SECONDS. Read-only; the JSON of specs is looked at in Python."""
    with read_session(engine) as s:
        queued = exists().where(Run.sweep_id == Sweep.id, Run.status == QUEUED)
        recent = exists().where(Run.sweep_id == Sweep.id, Run.finished_at >= db_now() - PENDING_WINDOW_SECONDS)
        rows = s.execute(select(Sweep.id, Sweep.spec).where(
            Sweep.kind == SweepKind.QUEUED.value, ~queued,
            or_(recent, Sweep.created_at >= db_now() - PENDING_WINDOW_SECONDS)).order_by(Sweep.id)).all()
    return [sweep_id for sweep_id, spec in rows
            if isinstance(spec, dict) and (spec.get("method") in ("random", "tpe") or spec.get("race"))]


def plan_pending(engine: Engine, *, lease_seconds: float = 60.0) -> list[PlanResult]:
    """Plan every sweep of `pending_sweeps`; answers the plans that added something."""
    out = []
    for sweep_id in pending_sweeps(engine):
        result = plan(engine, sweep_id, lease_seconds=lease_seconds)
        if result.changed:
            out.append(result)
    return out
