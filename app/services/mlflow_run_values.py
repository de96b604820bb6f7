"""What the modules of MLflow's runs share (app/services/mlflow_runs.py tells how MLflow's runs are
sweeplab's external runs): the tags the server keeps, a run's limits, MLflow's statuses, and how a
param's text, a seed and a run id read.

A param's text becomes a number in the config when it reads back as the same text ("32", "0.001";
not "1e-3" or "007"), so MLflow's configs compare with sweeplab's and get-run answers exactly the
text logged. The seed must be a whole number; until one is logged a run's seed is 0. Tags under
`sweeplab.` are the server's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from app.errors import InvalidSpec, NotFound
from app.models import RunSource, RunStatus

SEED = "seed"
RESERVED_TAG_PREFIX = "sweeplab."
SEED_PARAM_TAG = "sweeplab.seed_param"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
EXTERNAL = RunSource.EXTERNAL.value
RUNNING = RunStatus.RUNNING.value
MAX_SEED = 2**63 - 1
MAX_TAGS_PER_RUN = 1000
MAX_TAGS_CHARS = 200_000  # a run's tags as JSON
MAX_ROW_ID = 2**31 - 1  # runs.id and sweeps.id are INTEGER columns (PostgreSQL's int4)

TO_MLFLOW_STATUS = {RunStatus.QUEUED.value: "SCHEDULED", RunStatus.RUNNING.value: "RUNNING",
                    RunStatus.SUCCEEDED.value: "FINISHED", RunStatus.FAILED.value: "FAILED",
                    RunStatus.CANCELLED.value: "KILLED", RunStatus.PRUNED.value: "KILLED"}
FROM_MLFLOW_STATUS = {"FINISHED": RunStatus.SUCCEEDED, "FAILED": RunStatus.FAILED, "KILLED": RunStatus.CANCELLED}


class RunNotFound(NotFound):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id[:100]!r} not found")


def param_value(text: str) -> Any:
    """A param's text as the config holds it: a number when it reads back as the same text."""
    stripped = text.strip()
    if stripped != text or not stripped:
        return text
    try:
        number = int(text)
    except ValueError:
        pass
    else:
        return number if str(number) == text and abs(number) < 2**53 else text
    try:
        real = float(text)
    except ValueError:
        return text
    return real if math.isfinite(real) and repr(real) == text else text


def param_text(value: Any) -> str:
    """A config value as MLflow's param text (the inverse of param_value for what it made)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def parse_seed(text: str, where: str) -> int:
    try:
        seed = int(text.strip())
    except ValueError:
        raise InvalidSpec(f"{where}: the seed names a replicate and must be a whole number, not {text[:50]!r}",
                          fields=[{"loc": where, "msg": "must be a whole number"}]) from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidSpec(f"{where}: the seed must be between 0 and {MAX_SEED}")
    return seed


def row_id(text: str) -> int | None:
    """TEXT as a run's or an experiment's id: ASCII digits (str.isdigit also takes '²', which int()
    refuses, and int() reads '٣' as 3) within the id columns' range; None when it can name none."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > MAX_ROW_ID:
        return None
    return int(text)


def parse_run_id(run_id: str | None) -> int:
    if not run_id:
        raise InvalidSpec("run_id: required", fields=[{"loc": "run_id", "msg": "required"}])
    rid = row_id(run_id)
    if rid is None:
        raise RunNotFound(run_id)
    return rid
