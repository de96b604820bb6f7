"""The per-config parts of an answer, kept with the snapshot they were made from (app.services.memo,
app.services.snapshots): after a change only the changed configs' parts are computed again (a run
finished: one config's, not the sweep's). The finals (app.services.finals), the config table's rows
(app.services.results) and the aggregated curves (app.services.charts) are kept this way.

A snapshot whose commit sequences went backwards is of another database at the same URL (dropped
and made again): nothing kept from an older one holds then, and everything is computed again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

from app.services.memo import memo
from app.services.snapshots import Snapshot

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# (names of the answers, config ids to compute or None for all) -> per name, the parts per config id
Compute = Callable[[list[K], list[int] | None], Mapping[K, Mapping[int, T]]]
Holds = Callable[[Snapshot, Snapshot], bool]


@dataclass(frozen=True)
class Parts(Generic[T]):
    """An answer's parts per config id and its generation: a new number whenever a part changed."""

    by_config: dict[int, T]
    generation: int


_generation = itertools.count(1)


def went_back(older: Snapshot, snap: Snapshot) -> bool:
    """Whether a sweep's commit sequence is lower in SNAP than in OLDER: the database at this URL is
    not the one OLDER was read from, so nothing made from OLDER holds."""
    return any(snap.seqs.get(sweep, 0) < seq for sweep, seq in older.seqs.items())


def same_snapshot(older: Snapshot, snap: Snapshot) -> bool:
    """The `holds` of answers that depend on everything a snapshot saw: nothing was read since."""
    return older is snap


def same_statuses(older: Snapshot, snap: Snapshot) -> bool:
    """The `holds` of answers that depend on the runs' statuses alone (the config table)."""
    return older.status_digest == snap.status_digest


def kept_while(key: Hashable, snap: Snapshot, holds: Holds, compute: Callable[[], T]) -> T:
    """The answer under KEY if the snapshot it was made from HOLDS for SNAP (and is of this
    database), else COMPUTE's, stored with SNAP."""
    hit = memo.peek(key)
    if hit is not None and not went_back(hit[0], snap) and holds(hit[0], snap):
        return hit[1]  # type: ignore[no-any-return]
    value = compute()
    memo.put(key, snap, value)
    return value


def parts_of(engine: Engine, keys: Mapping[K, Hashable], snap: Snapshot, compute: Compute[K, T], *,
             holds: Holds = same_snapshot, wanted: Sequence[int] | None = None,
             order: Callable[[dict[int, T]], dict[int, T]] | None = None) -> dict[K, Parts[T]]:
    """Per name of KEYS (name -> its memo key), its answer's parts as of SNAP.

    An answer whose snapshot HOLDS for SNAP is handed back as kept. Otherwise the configs that
    changed since its snapshot (Snapshot.changed_configs, asked once per older snapshot the answers
    share) are computed again with one COMPUTE call for all those answers, and the other configs'
    parts are kept, the same objects; an answer never computed, or made from another database at
    this URL (`went_back`), is computed whole, one COMPUTE call for all such. WANTED: the configs an
    answer has a part for, in this order (one missing is computed too); without it a config may
    have none, and ORDER puts a merged answer in order (a computed one already is). Each answer is
    stored with SNAP; its generation changes only when some part was computed again or dropped."""
    out: dict[K, Parts[T]] = {}
    whole: list[K] = []
    stale: dict[int, tuple[Snapshot, list[tuple[K, Parts[T]]]]] = {}  # per older snapshot (usually one)
    for name, key in keys.items():
        hit = memo.peek(key)
        if hit is None or went_back(hit[0], snap):
            whole.append(name)
        elif holds(hit[0], snap) and (wanted is None or list(hit[1].by_config) == list(wanted)):
            out[name] = hit[1]
        else:
            stale.setdefault(id(hit[0]), (hit[0], []))[1].append((name, hit[1]))
    if whole:
        computed = compute(whole, None)
        for name in whole:
            out[name] = _stored(keys[name], snap, _in_order(dict(computed.get(name, {})), wanted))
    for older, known in stale.values():
        changed = snap.changed_configs(engine, older)
        if wanted is None:
            todo = sorted(changed)
        else:  # the wanted configs that changed, or that an answer has no part for
            todo = sorted(c for c in wanted if c in changed or any(c not in p.by_config for _, p in known))
        again = compute([name for name, _ in known], todo) if todo else {}
        for name, before in known:
            if not todo and (wanted is None or list(before.by_config) == list(wanted)):
                memo.put(keys[name], snap, before)  # nothing changed: the same answer, as of SNAP
                out[name] = before
                continue
            merged = {c: part for c, part in before.by_config.items() if c not in changed} | dict(again.get(name, {}))
            merged = _in_order(merged, wanted) if wanted is not None else order(merged) if order else merged
            out[name] = _stored(keys[name], snap, merged)
    return {name: out[name] for name in keys}


def parts_of_one(engine: Engine, key: Hashable, snap: Snapshot, compute: Callable[[list[int] | None], Mapping[int, T]],
                 **options: Any) -> Parts[T]:
    """`parts_of` for one answer under KEY: COMPUTE gets the config ids to compute (None: all)."""
    return parts_of(engine, {key: key}, snap, lambda names, only: {key: compute(only)}, **options)[key]


def _in_order(parts: dict[int, T], wanted: Sequence[int] | None) -> dict[int, T]:
    return parts if wanted is None else {c: parts[c] for c in wanted if c in parts}


def _stored(key: Hashable, snap: Snapshot, by_config: dict[int, T]) -> Parts[T]:
    parts = Parts(by_config, next(_generation))
    memo.put(key, snap, parts)
    return parts
