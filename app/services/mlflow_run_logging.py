"""What an MLflow run logs besides metric points (those: app/services/mlflow_metric_points.py):
its params, which are its config, and its tags; runs/log-batch, the one write that carries all
three, and tag deletes.

Writes to a run that ended are INVALID_STATE, except tags (MLflow allows them on finished runs).
Any write to a running run counts as a heartbeat.

**Params are the config; the param (or tag) `seed` is the replicate.** MLflow creates a run
before any param is logged, and params may come in several requests (autolog logs fit()'s
arguments, then the optimizer's, then early stopping's). So a run starts in the config of the
params it has (none yet: the config `{}`, labelled "base") and moves, in the transaction that
stores new params, to the config of all its params so far, found or created by content hash as
every external config is; the config it left is deleted when no run is left in it, so pending
runs leave nothing behind. A param never changes once logged (MLflow's own rule: another value
for a logged key is INVALID_PARAMETER_VALUE), so a run only moves towards more params, and runs
with equal params end in one config whatever order they logged them in: they are replicates,
with the bands, verdicts and reports of any other config. (The seed param's text is kept in the
run's tags under `sweeplab.seed_param`, which answers hide.)

Concurrency: a write to a run first takes the run's row (the conditioned UPDATE of heartbeat_at,
as an external epoch does), so two requests for one run serialise and a reaper racing them wins
or loses whole; config find-or-create and the orphan delete run under external runs' lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from app.db import db_now, write_session
from app.errors import InvalidSpec, InvalidTransition, NotFound
from app.models import Config, Run
from app.services import external
from app.services.mlflow_metric_points import MetricPoint, store_metrics
from app.services.mlflow_run_values import (
    EXTERNAL,
    MAX_TAGS_CHARS,
    MAX_TAGS_PER_RUN,
    RESERVED_TAG_PREFIX,
    RUNNING,
    SEED,
    SEED_PARAM_TAG,
    RunNotFound,
    param_text,
    param_value,
    parse_run_id,
    parse_seed,
)


def writable_run(s: Session, run_id: int, what: str) -> Run:
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


def tagged_run(s: Session, run_id: int) -> Run:
    """The external run (any status), its row held, for a change of tags."""
    run = s.scalars(select(Run).where(Run.id == run_id).with_for_update()).first()
    if run is None:
        raise RunNotFound(str(run_id))
    if run.source != EXTERNAL:
        raise InvalidSpec(f"run {run_id} is trained by sweeplab's workers; it takes no tags from MLflow")
    return run


def check_tag_keys(tags: dict[str, str]) -> None:
    for key in tags:
        if key.startswith(RESERVED_TAG_PREFIX):
            raise InvalidSpec(f"tags.{key}: tags under {RESERVED_TAG_PREFIX!r} are the server's",
                              fields=[{"loc": f"tags.{key}", "msg": "reserved"}])


def check_tags_size(tags: dict[str, Any]) -> None:
    """A run's tags, all of them, within the run's limits."""
    if len(tags) > MAX_TAGS_PER_RUN or len(json.dumps(tags)) > MAX_TAGS_CHARS:
        raise InvalidSpec(f"tags: a run holds at most {MAX_TAGS_PER_RUN} tags, {MAX_TAGS_CHARS} characters in all",
                          fields=[{"loc": "tags", "msg": "over the run's limit"}])


def store_tags(s: Session, run: Run, tags: dict[str, str]) -> None:
    if not tags:
        return
    check_tag_keys(tags)
    merged = {**(run.tags or {}), **tags}
    check_tags_size(merged)
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
        size = external.config_chars(merged)
        if size > external.MAX_CONFIG_CHARS:  # external.check_config's limit, named as MLflow's params
            new = ", ".join(sorted(k for k in merged if k not in have))[:200]
            raise InvalidSpec(f"params: a run's params are its config, at most {external.MAX_CONFIG_CHARS} "
                              f"characters as JSON; with {new} they come to {size}",
                              fields=[{"loc": "params", "msg": f"over {external.MAX_CONFIG_CHARS} characters"}])
        _move_to(s, run, merged, max_configs)


def log_batch(engine: Engine, run_id: str, metrics: Sequence[MetricPoint], params: dict[str, str],
              tags: dict[str, str], max_configs: int) -> int:
    """Params, then tags, then metrics of one run, in one transaction; the metric rows stored."""
    rid = parse_run_id(run_id)
    with write_session(engine) as s:
        if not metrics and not params and tags:
            return _set_tags(s, rid, tags)
        what = "metrics" if metrics else "params" if params else "writes"
        run = writable_run(s, rid, what)
        _store_params(s, run, params, max_configs)
        store_tags(s, run, tags)
        return store_metrics(s, run, metrics)


def _set_tags(s: Session, run_id: int, tags: dict[str, str]) -> int:
    run = tagged_run(s, run_id)
    if run.status == RUNNING:
        s.execute(update(Run).where(Run.id == run_id, Run.status == RUNNING).values(heartbeat_at=db_now()))
    store_tags(s, run, tags)
    return 0


def delete_tag(engine: Engine, run_id: str, key: str) -> None:
    rid = parse_run_id(run_id)
    check_tag_keys({key: ""})
    with write_session(engine) as s:
        run = tagged_run(s, rid)
        tags = dict(run.tags or {})
        if key not in tags:
            raise NotFound(f"run {rid} has no tag {key[:250]!r}")
        del tags[key]
        run.tags = tags
        if key == SEED and SEED_PARAM_TAG not in tags and run.status == RUNNING:
            run.seed = 0
