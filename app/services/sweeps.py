"""Sweeps: create from a spec (expanding configs and runs), list, read, cancel, retry."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, case, delete, func, insert, select, true, update

from app.db import db_now, read_session, write_session
from app.errors import InvalidSpec, SweepNotFound
from app.models import Artifact, Checkpoint, Config, Metric, Run, RunSource, RunStatus, Sweep, SweepKind
from app.packing import pack_key
from app.schemas import Budget, ConfigPublic, Progress, StatusCounts, SweepProgress, SweepPublic, SweepsProgress, iso
from app.spec import SweepSpec, describe_params, storable
from app.statuses import FINAL, RETRYABLE

INSERT_CHUNK = 1000
QUEUED, RUNNING, CANCELLED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.CANCELLED.value


def create_sweep(engine: Engine, spec: SweepSpec, max_runs: int, max_attempts: int,
                 lease_seconds: float = 60.0) -> SweepPublic:
    """Store the sweep, one config per grid combination and one queued run per (config, seed). A
    search (method random or tpe) starts with no config: the planner (app.services.planner) makes
    its first ones in the same transaction and the rest as work frees up."""
    n = spec.run_count()
    if n > max_runs:
        field = "max_configs" if spec.searching else "grid"
        message = f"the sweep expands to {n} runs; this server accepts at most {max_runs} per sweep"
        raise InvalidSpec(message, [{"loc": field, "msg": message}])
    configs = [] if spec.searching else spec.expand()
    seeds = spec.seed_list()
    # A search's stored spec leaves out a learning rate it did not choose (as filled_in does), so a
    # searched optimizer.name gets its own default when the planner reads the spec back.
    stored = spec.filled_in() if spec.searching else spec.model_dump(mode="json", exclude_none=True)
    if spec.adaptive:
        from app.services.planner import prepare

        prepare(spec)
    with write_session(engine) as s:
        sweep = Sweep(kind=SweepKind.QUEUED.value, name=spec.name, study=spec.study, dataset=spec.dataset,
                      spec=stored, run_count=n)
        s.add(sweep)
        s.flush()
        rows = []
        for position, cfg in enumerate(configs):
            config = Config(sweep_id=sweep.id, position=position, key=cfg.key, label=describe_params(cfg.params),
                            params=cfg.params, train=cfg.train.model_dump(mode="json"), pack_key=pack_key(cfg.train))
            s.add(config)
            s.flush()
            rows += [{"sweep_id": sweep.id, "config_id": config.id, "seed": seed, "epochs": cfg.train.epochs,
                      "max_attempts": max_attempts, "program": cfg.train.program, "pack_key": config.pack_key}
                     for seed in seeds]
        for i in range(0, len(rows), INSERT_CHUNK):
            s.execute(insert(Run).values(
                [{**r, "status": RunStatus.QUEUED.value, "source": RunSource.QUEUE.value, "attempt": 0,
                  "last_epoch": -1, "cancel_requested": False, "train_seconds": 0.0, "created_at": db_now()}
                 for r in rows[i:i + INSERT_CHUNK]]
            ))
        sweep_id = sweep.id
        if spec.adaptive:
            from app.services.planner import plan_locked

            plan_locked(s, sweep_id, spec, lease_seconds=lease_seconds, max_attempts=max_attempts)
    return read_sweep(engine, sweep_id)


def _counts(engine: Engine, sweep_ids: list[int]) -> dict[int, StatusCounts]:
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if sweep_ids:
        with read_session(engine) as s:
            rows = s.execute(
                select(Run.sweep_id, Run.status, func.count())
                .where(Run.sweep_id.in_(sweep_ids)).group_by(Run.sweep_id, Run.status)
            ).all()
        for sweep_id, status, n in rows:
            out[sweep_id][status] = n
    return {i: StatusCounts(**out.get(i, {})) for i in sweep_ids}


def _public(sweep: Sweep, counts: StatusCounts, n_configs: int, budget: Budget | None = None) -> SweepPublic:
    return SweepPublic(id=sweep.id, name=sweep.name, study=sweep.study, dataset=sweep.dataset,
                       runs=counts.total or sweep.run_count, configs=n_configs, created_at=iso(sweep.created_at),
                       status_counts=counts, spec=sweep.spec, budget=budget)


def max_replicates_of(spec: Any) -> int:
    """The most seeds a config of a stored spec can get (SweepSpec.max_replicates, read off the JSON
    without validating it again)."""
    replicates = spec.get("replicates") if isinstance(spec, dict) else None
    if isinstance(replicates, dict) and isinstance(replicates.get("max"), int):
        return int(replicates["max"])
    if isinstance(spec, dict) and isinstance(spec.get("seeds"), list):
        return len(spec["seeds"])
    return replicates if isinstance(replicates, int) and not isinstance(replicates, bool) else 1


def _budgets(engine: Engine, sweeps: list[Sweep]) -> dict[int, Budget]:
    """Model-epochs used (each run's epochs trained) and of the fixed design (every config at max
    replicates for all its epochs) of each queued sweep: two GROUP BYs."""
    ids = [sw.id for sw in sweeps if sw.kind == SweepKind.QUEUED.value]
    if not ids:
        return {}
    trained = case((Run.last_epoch > 0, Run.last_epoch), else_=0)
    per_config = (select(Run.sweep_id.label("sweep_id"), func.max(Run.epochs).label("epochs"))
                  .where(Run.sweep_id.in_(ids)).group_by(Run.sweep_id, Run.config_id)).subquery("config_epochs")
    with read_session(engine) as s:
        used: dict[int, int] = dict(s.execute(
            select(Run.sweep_id, func.coalesce(func.sum(trained), 0)).where(Run.sweep_id.in_(ids))
            .group_by(Run.sweep_id)).all())
        design: dict[int, int] = dict(s.execute(
            select(per_config.c.sweep_id, func.coalesce(func.sum(per_config.c.epochs), 0))
            .group_by(per_config.c.sweep_id)).all())
    return {sw.id: Budget(model_epochs_used=int(used.get(sw.id, 0)),
                          model_epochs_fixed_design=int(design.get(sw.id, 0)) * max_replicates_of(sw.spec))
            for sw in sweeps if sw.id in ids}


def _config_counts(engine: Engine, sweep_ids: list[int]) -> dict[int, int]:
    if not sweep_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(select(Config.sweep_id, func.count()).where(Config.sweep_id.in_(sweep_ids))
                         .group_by(Config.sweep_id)).all()
    return {sweep_id: n for sweep_id, n in rows}


def list_sweeps(engine: Engine, study: str | None = None, status: str | None = None,
                limit: int = 200, offset: int = 0) -> list[SweepPublic]:
    """Newest first; `status` keeps sweeps that have at least one run in that status."""
    if study is not None and not storable(study):
        return []  # no stored sweep has it (specs refuse it), and PostgreSQL cannot even compare it
    with read_session(engine) as s:
        q = select(Sweep).order_by(Sweep.id.desc())
        if study is not None:
            q = q.where(Sweep.study == study)
        if status is not None:
            q = q.where(Sweep.id.in_(select(Run.sweep_id).where(Run.status == status)))
        sweeps = list(s.scalars(q.limit(limit).offset(offset)))
    ids = [sw.id for sw in sweeps]
    counts, n_configs, budgets = _counts(engine, ids), _config_counts(engine, ids), _budgets(engine, sweeps)
    return [_public(sw, counts[sw.id], n_configs.get(sw.id, 0), budgets.get(sw.id)) for sw in sweeps]


def get_sweep_row(engine: Engine, sweep_id: int) -> Sweep:
    with read_session(engine) as s:
        sweep = s.get(Sweep, sweep_id)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def read_sweep(engine: Engine, sweep_id: int) -> SweepPublic:
    sweep = get_sweep_row(engine, sweep_id)
    return _public(sweep, _counts(engine, [sweep_id])[sweep_id], _config_counts(engine, [sweep_id]).get(sweep_id, 0),
                   _budgets(engine, [sweep]).get(sweep_id))


COUNTED = ("runs", "ended", "running", "succeeded", "failed", "pruned", "epochs_done", "epochs_left")


def progress(engine: Engine, sweep_ids: list[int]) -> SweepsProgress:
    """Runs and epochs done and left of each sweep and in total, counted by the database (one
    GROUP BY): a client waiting on several big sweeps asks once per tick and gets no run list. An
    adaptive sweep whose runs have all ended asks its planner whether more are to come (the gap
    between a race's rounds or a search's configs), so a waiting client does not stop in it."""
    ids = list(dict.fromkeys(sweep_ids))
    final = [s.value for s in FINAL]
    ended = Run.status.in_(final)
    trained = case((Run.last_epoch > 0, Run.last_epoch), else_=0)
    left = case((ended, 0), (Run.epochs > trained, Run.epochs - trained), else_=0)

    def tally(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    with read_session(engine) as s:
        known = set(s.scalars(select(Sweep.id).where(Sweep.id.in_(ids))))
        missing = [i for i in ids if i not in known]
        if missing:
            raise SweepNotFound(missing[0])
        rows = s.execute(
            select(Run.sweep_id, func.count(), tally(ended), tally(Run.status == RUNNING),
                   tally(Run.status == RunStatus.SUCCEEDED.value), tally(Run.status == RunStatus.FAILED.value),
                   tally(Run.status == RunStatus.PRUNED.value),
                   func.coalesce(func.sum(trained), 0), func.coalesce(func.sum(left), 0))
            .where(Run.sweep_id.in_(ids)).group_by(Run.sweep_id)
        ).all()
        counts = {row[0]: dict(zip(COUNTED, map(int, row[1:]), strict=True)) for row in rows}
        from app.services.planner import more_to_come

        coming = {i: c["ended"] == c["runs"] and more_to_come(s, i) for i, c in counts.items()}
    sweeps = [SweepProgress(id=i, **counts.get(i, dict.fromkeys(COUNTED, 0)), more_to_come=coming.get(i, False))
              for i in ids]
    total = Progress(**{f: sum(getattr(p, f) for p in sweeps) for f in COUNTED},
                     more_to_come=any(p.more_to_come for p in sweeps))
    return SweepsProgress(sweeps=sweeps, total=total)


def list_configs(engine: Engine, sweep_id: int) -> list[ConfigPublic]:
    get_sweep_row(engine, sweep_id)
    with read_session(engine) as s:
        rows = s.scalars(select(Config).where(Config.sweep_id == sweep_id).order_by(Config.position)).all()
    return [ConfigPublic(id=c.id, sweep_id=c.sweep_id, position=c.position, key=c.key, label=c.label,
                         params=c.params, config=c.train) for c in rows]


def cancel_values() -> dict[str, Any]:
    """One UPDATE's SET clause that cancels a queued run and asks a running one to stop, each decided
    on the row the UPDATE itself locks: read first and decide later, and a claim committing in between
    turns a cancelled answer into a run that trains to the end (PostgreSQL re-evaluates these on
    the claim's committed row; SQLite serialises every writer)."""
    return {
        "status": case((Run.status == QUEUED, CANCELLED), else_=Run.status),
        "finished_at": case((Run.status == QUEUED, db_now()), else_=Run.finished_at),
        "cancel_requested": case((Run.status == RUNNING, true()), else_=Run.cancel_requested),
    }


def cancel_sweep(engine: Engine, sweep_id: int) -> SweepPublic:
    """Queued runs end cancelled now; running runs are asked to stop (within an epoch). One
    statement: with one for queued and one for running runs, a run claimed or released between
    the two was missed by both."""
    get_sweep_row(engine, sweep_id)
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == sweep_id, Run.status.in_([QUEUED, RUNNING]))
                  .values(cancel_values()))
    return read_sweep(engine, sweep_id)


def retry_failed(engine: Engine, sweep_id: int) -> SweepPublic:
    """Queue the sweep's failed and cancelled runs again, from scratch (their old epochs go), and its
    pruned runs again from where they stopped (epochs and checkpoints kept: they resume, and their
    configs are not pruned again, app.services.pruning)."""
    get_sweep_row(engine, sweep_id)
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == sweep_id, Run.source == RunSource.QUEUE.value,
                                    Run.status == RunStatus.PRUNED.value)
                  .values(status=RunStatus.QUEUED.value, attempt=0, error=None, cancel_requested=False,
                          finished_at=None, worker_id=None, lease_token=None, lease_expires_at=None))
        ids = list(s.scalars(select(Run.id).where(
            Run.sweep_id == sweep_id, Run.source == RunSource.QUEUE.value,
            Run.status.in_([status.value for status in RETRYABLE if status != RunStatus.PRUNED]))))
        for table in (Metric, Artifact, Checkpoint):
            s.execute(delete(table).where(table.run_id.in_(ids)))
        s.execute(update(Run).where(Run.id.in_(ids))
                  .values(status=RunStatus.QUEUED.value, attempt=0, error=None, cancel_requested=False,
                          finished_at=None, started_at=None, worker_id=None, last_epoch=-1, train_seconds=0.0))
    return read_sweep(engine, sweep_id)


def parse_spec(data: Any) -> SweepSpec:
    """Validate a spec from JSON or YAML data; InvalidSpec names the failing field."""
    from pydantic import ValidationError

    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        fields = [{"loc": ".".join(str(p) for p in e["loc"]) or "spec", "msg": e["msg"].removeprefix("Value error, ")}
                  for e in exc.errors()]
        message = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields[:5])
        raise InvalidSpec(message, fields) from None
