"""A queued sweep's spec read back from its row: the one reader the planner (searches, races), the
prune (app.services.pruning) and the decisions page share.

Each caller names the blocks it needs (`race`, `prune`, or a search `method`), tested on the stored
JSON before the spec is validated, so sweeps without them cost no validation. A stored spec this
version cannot read (written by another version) is None: nothing is planned, raced or pruned for
it, and it is logged once per sweep, not on every pack or request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from app.models import Sweep, SweepKind
from app.spec import SweepSpec

log = logging.getLogger("sweeplab.specs")
_unreadable_logged: set[tuple[int, float]] = set()  # (id, created_at): a sweep, whichever database

SEARCH_METHODS = ("random", "tpe")


def stored_spec(sweep: Sweep, wants: Callable[[dict[str, Any]], bool]) -> SweepSpec | None:
    """SWEEP's spec, if the sweep is queued and WANTS its stored JSON; None for an external sweep,
    one WANTS passes over, or a spec this version cannot read."""
    if sweep.kind != SweepKind.QUEUED.value or not isinstance(sweep.spec, dict) or not wants(sweep.spec):
        return None
    try:
        return SweepSpec.model_validate(sweep.spec)
    except ValidationError:
        if (sweep.id, sweep.created_at) not in _unreadable_logged:
            _unreadable_logged.add((sweep.id, sweep.created_at))
            log.warning("sweep %d: its stored spec no longer validates; it is not planned, raced or pruned", sweep.id)
        return None


def searches_or_races(spec: dict[str, Any]) -> bool:
    return spec.get("method") in SEARCH_METHODS or bool(spec.get("race"))


def prunes(spec: dict[str, Any]) -> bool:
    return bool(spec.get("prune"))


def races_or_prunes(spec: dict[str, Any]) -> bool:
    return bool(spec.get("race") or spec.get("prune"))
