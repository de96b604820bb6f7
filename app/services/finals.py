"""The one definition of a run's final value of a metric: the value at the largest epoch at which
that run logged the key, read from succeeded runs only.

Not `Run.epochs`: an external run (POST /api/external/runs) declares 0 epochs unless told and
grows only `last_epoch`, and a run that logs a key at some epochs only (a test metric at the end)
has its final where it last logged it. A NaN final (stored as NULL) stays in the answer as None;
readers drop it (app.services.stats.finite) and say so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select

from app.db import read_session
from app.models import Metric, Run, RunStatus
from app.numbers import finite_or_none
from app.services.snapshots import Scope

SUCCEEDED = RunStatus.SUCCEEDED.value

# (run id, seed, final value or None) of each succeeded run of a config, by run id
Finals = dict[int, list[tuple[int, int, float | None]]]


def final_rows_query(where: Any, keys: Sequence[str]) -> Any:
    """SELECT run id, config id, seed, key, final value for the succeeded runs matching WHERE and
    the KEYS they logged, ordered by run id: the value at each run's largest epoch of that key."""
    done = and_(where, Run.status == SUCCEEDED)
    last = (select(Metric.run_id.label("run_id"), Metric.key.label("key"), func.max(Metric.epoch).label("epoch"))
            .join(Run, Run.id == Metric.run_id)
            .where(done, Metric.key.in_(list(keys)))
            .group_by(Metric.run_id, Metric.key)).subquery("last_epochs")
    return (select(Run.id, Run.config_id, Run.seed, Metric.key, Metric.value)
            .join(last, last.c.run_id == Run.id)
            .join(Metric, and_(Metric.run_id == last.c.run_id, Metric.key == last.c.key,
                               Metric.epoch == last.c.epoch))
            .order_by(Run.id))


def finals_by_key(engine: Engine, scope: Scope, keys: Sequence[str]) -> dict[str, Finals]:
    """Per key of KEYS, per config of SCOPE: the finals of its succeeded runs (run id, seed, value),
    in run id order. A config with no succeeded run logging the key is absent."""
    with read_session(engine) as s:
        rows = s.execute(final_rows_query(scope.where(), keys)).all()
    out: dict[str, Finals] = {k: defaultdict(list) for k in keys}
    for run_id, config_id, seed, key, value in rows:
        out[key][config_id].append((run_id, seed, finite_or_none(value)))
    return {k: dict(v) for k, v in out.items()}


def final_values(engine: Engine, *, sweep_id: int | None = None, config_ids: Sequence[int] | None = None,
                 key: str) -> Finals:
    """Per config of the sweep (or of CONFIG_IDS, from any sweeps; both: those of the sweep), the
    finals of KEY of its succeeded runs: (run id, seed, value), value None when not a real number."""
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    return finals_by_key(engine, scope, [key])[key]
