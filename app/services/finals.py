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

from sqlalchemy import Engine, and_, select

from app.db import read_session
from app.models import Run, RunFinal, RunStatus
from app.numbers import finite_or_none
from app.services.incremental import parts_of
from app.services.snapshots import Scope, snapshot

SUCCEEDED = RunStatus.SUCCEEDED.value

# (run id, seed, final value or None) of each succeeded run of a config, by run id
Finals = dict[int, list[tuple[int, int, float | None]]]


def final_rows_query(where: Any, keys: Sequence[str]) -> Any:
    """SELECT run id, config id, seed, key, final value for the succeeded runs matching WHERE and
    the KEYS they logged, ordered by run id: the value at each run's largest epoch of that key, as
    the database keeps it while epochs commit (RunFinal, migration 0007)."""
    return (select(Run.id, Run.config_id, Run.seed, RunFinal.key, RunFinal.value)
            .join(RunFinal, RunFinal.run_id == Run.id)
            .where(where, Run.status == SUCCEEDED, RunFinal.key.in_(list(keys)))
            .order_by(Run.id))


def _read(engine: Engine, where: Any, keys: Sequence[str]) -> dict[str, Finals]:
    with read_session(engine) as s:
        rows = s.execute(final_rows_query(where, keys)).all()
    out: dict[str, Finals] = {k: defaultdict(list) for k in keys}
    for run_id, config_id, seed, key, value in rows:
        out[key][config_id].append((run_id, seed, finite_or_none(value)))
    return {k: dict(v) for k, v in out.items()}


def finals_by_key(engine: Engine, scope: Scope, keys: Sequence[str]) -> dict[str, Finals]:
    """Per key of KEYS, per config of SCOPE: the finals of its succeeded runs (run id, seed, value),
    in run id order. A config with no succeeded run logging the key is absent.

    Cached per scope and key with the snapshot they hold for (app.services.incremental): a later
    call reads again only the configs whose runs changed since (a run finished: one config's finals,
    not the sweep's), in one read for all the keys, so the table, verdicts, importance and parallel
    coordinates share one read. The finals are read after the snapshot, so they hold at least what
    it saw; what came after it is read again next time. Callers must not change what they get."""
    snap = snapshot(engine, scope)

    def read(names: list[str], only: list[int] | None) -> dict[str, Finals]:
        where = scope.where() if only is None else and_(scope.where(), Run.config_id.in_(only))
        return _read(engine, where, names)

    parts = parts_of(engine, {key: (engine.url, "finals", scope, key) for key in keys}, snap, read,
                     order=_by_first_run)
    return {key: p.by_config for key, p in parts.items()}


def _by_first_run(finals: Finals) -> Finals:
    return dict(sorted(finals.items(), key=lambda item: item[1][0][0]))


def final_values(engine: Engine, *, sweep_id: int | None = None, config_ids: Sequence[int] | None = None,
                 key: str) -> Finals:
    """Per config of the sweep (or of CONFIG_IDS, from any sweeps; both: those of the sweep), the
    finals of KEY of its succeeded runs: (run id, seed, value), value None when not a real number."""
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    return finals_by_key(engine, scope, [key])[key]
