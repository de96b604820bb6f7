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
from app.services.memo import memo
from app.services.snapshots import Scope, Snapshot, snapshot

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

    Cached per scope and key with the snapshot they hold for (app.services.snapshots): a later call
    reads again only the configs whose runs changed since (a run finished: one config's finals, not
    the sweep's), so the table, verdicts, importance and parallel coordinates share one read. The
    finals are read after the snapshot, so they hold at least what it saw; what came after it is
    read again next time. Callers must not change what they get."""
    snap = snapshot(engine, scope)
    out: dict[str, Finals] = {}
    stale: dict[int, tuple[Snapshot, list[str]]] = {}  # per older snapshot: its keys (usually all share one)
    fresh: list[str] = []
    for key in keys:
        hit = memo.peek((engine.url, "finals", scope, key))
        if hit is None:
            fresh.append(key)
        elif hit[0] is snap:
            out[key] = hit[1]
        else:
            stale.setdefault(id(hit[0]), (hit[0], []))[1].append(key)
    if fresh:
        for key, value in _read(engine, scope.where(), fresh).items():
            memo.put((engine.url, "finals", scope, key), snap, value)
            out[key] = value
    for older, older_keys in stale.values():
        if any(snap.seqs.get(sweep, 0) < seq for sweep, seq in older.seqs.items()):  # a new database at this URL
            for key, value in _read(engine, scope.where(), older_keys).items():
                memo.put((engine.url, "finals", scope, key), snap, value)
                out[key] = value
            continue
        changed = snap.changed_configs(engine, older)
        again = _read(engine, and_(scope.where(), Run.config_id.in_(sorted(changed))), older_keys) if changed else {}
        for key in older_keys:
            hit = memo.peek((engine.url, "finals", scope, key))
            before = hit[1] if hit is not None and hit[0] is older else {}
            if hit is None or hit[0] is not older:  # replaced meanwhile: read it whole
                value = _read(engine, scope.where(), [key])[key]
            else:
                value = {c: v for c, v in before.items() if c not in changed} | again.get(key, {})
                value = dict(sorted(value.items(), key=lambda item: item[1][0][0]))  # configs by first run id
            memo.put((engine.url, "finals", scope, key), snap, value)
            out[key] = value
    return {k: out[k] for k in keys}


def final_values(engine: Engine, *, sweep_id: int | None = None, config_ids: Sequence[int] | None = None,
                 key: str) -> Finals:
    """Per config of the sweep (or of CONFIG_IDS, from any sweeps; both: those of the sweep), the
    finals of KEY of its succeeded runs: (run id, seed, value), value None when not a real number."""
    scope = Scope(sweep_id, tuple(config_ids) if config_ids is not None else None)
    return finals_by_key(engine, scope, [key])[key]
