"""What runs trained with: the vocabulary of `runs.provenance`, how an attempt's record joins the
run's, and the distinct values over a sweep's (or some configs') succeeded runs.

A run's provenance is one JSON object (migration 0004). A worker writes it when it starts training
a pack (`app.services.queue.record_provenance`, fenced); an external client may send one when it
creates its run. Its fields, all optional:

- `seed`, `sweeplab`, `python`, `tensorflow`, `keras`, `numpy`: the run's seed and the versions
  (strings; "not installed" where a package is missing);
- `dataset`, `dataset_sha256`: the dataset's name and the sha256 of its file ("download" when it
  came from Keras' cache, or the hash of a folder's files in name order);
- `host`, `cpu`, `gpu` ("none" without one);
- `trainer` ("keras_packed", "keras_single", "fake", ...), `packed` (bool), `pack_size` (int: the runs
  trained together in that attempt);
- `attempt`: the claim's attempt number (queued runs);
- `earlier`: the records of earlier attempts of a resumed run, oldest first, each without its own
  `earlier` (at most MAX_EARLIER are kept). The top level is always the latest attempt: a run
  resumed on another host says where it finished, and `earlier` where it began.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, select

from app.db import read_session
from app.models import Run, RunStatus

ATTEMPT = "attempt"
EARLIER = "earlier"
MAX_EARLIER = 10
FIELDS = ("seed", "sweeplab", "python", "tensorflow", "keras", "numpy", "host", "cpu", "gpu", "dataset",
          "dataset_sha256", "trainer", "packed", "pack_size", ATTEMPT)
"""The fields a worker records, in the order it records them and the run page shows them (an external
run may send others)."""

Scalar = str | int | float | bool


def with_earlier(existing: dict[str, Any] | None, latest: dict[str, Any]) -> dict[str, Any]:
    """The run's provenance after attempt LATEST: LATEST on top, the run's EXISTING record (if it is
    another attempt's) appended to `earlier`. Idempotent: writing the same attempt twice (a retry
    whose first commit's answer was lost) keeps one record of it."""
    top = {k: v for k, v in latest.items() if k != EARLIER}
    if not existing:
        return top
    earlier = [e for e in existing.get(EARLIER) or [] if isinstance(e, dict)]
    previous = {k: v for k, v in existing.items() if k != EARLIER}
    if previous and previous.get(ATTEMPT) != top.get(ATTEMPT):
        earlier.append(previous)
    if earlier:
        top[EARLIER] = earlier[-MAX_EARLIER:]
    return top


def _sort_key(value: Scalar) -> tuple[int, Any]:
    # bool before numbers before text; True == 1 in Python, so the type is part of every key.
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


def distinct_values(records: Iterable[dict[str, Any] | None]) -> dict[str, list[Scalar]]:
    """Per field, the distinct scalar values over RECORDS (sorted; nested values and null skipped)."""
    seen: dict[str, dict[str, Scalar]] = defaultdict(dict)
    for record in records:
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            if isinstance(value, str | int | float | bool):
                seen[key].setdefault(json.dumps(value), value)
    return {key: sorted(values.values(), key=_sort_key) for key, values in sorted(seen.items())}


def _succeeded(engine: Engine, where: Any) -> list[dict[str, Any] | None]:
    with read_session(engine) as s:
        return list(s.scalars(
            select(Run.provenance).where(and_(where, Run.status == RunStatus.SUCCEEDED.value)).order_by(Run.id)))


def sweep_provenance(engine: Engine, sweep_id: int) -> dict[str, list[Scalar]]:
    """The distinct values of each provenance field over the sweep's succeeded runs, e.g.
    `{"tensorflow": ["2.21.0"], "dataset_sha256": ["ab12..."], "packed": [True], "pack_size": [10]}`.
    Only the latest attempt of each run counts; a field no run recorded is absent; {} when none did."""
    return distinct_values(_succeeded(engine, Run.sweep_id == sweep_id))


def configs_provenance(engine: Engine, config_ids: Sequence[int]) -> dict[str, list[Scalar]]:
    """As sweep_provenance, over the succeeded runs of CONFIG_IDS (a study's configs, across sweeps)."""
    if not config_ids:
        return {}
    return distinct_values(_succeeded(engine, Run.config_id.in_(list(config_ids))))
