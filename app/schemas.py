"""What the API answers: plain pydantic models built from rows by the services; and the one body
both the API and the worker read, an epoch (POST /api/runs/{id}/epochs, and a training program's
epoch through worker/programs.py's channel), so the worker imports no router."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.metrics import KEY_CHARS

MAX_EPOCH = 100_000
MAX_KEYS_PER_EPOCH = 64
MetricKey = Annotated[str, StringConstraints(min_length=1, max_length=KEY_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]
# JSON has no NaN or infinity: a client names them (the spellings of JavaScript and Python's float()).
NonFinite = Literal["NaN", "Infinity", "-Infinity"]


def iso(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


class StatusCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    pruned: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.running + self.succeeded + self.failed + self.cancelled + self.pruned

    @property
    def active(self) -> int:
        return self.queued + self.running


class ConfigPublic(BaseModel):
    id: int
    sweep_id: int
    position: int
    key: str
    label: str
    params: dict[str, Any]
    config: dict[str, Any]


class Budget(BaseModel):
    """What a sweep spent against its fixed design: every config at its most seeds for all its epochs."""

    model_epochs_used: int = Field(description="epochs trained, summed over the sweep's runs")
    model_epochs_fixed_design: int = Field(description="every config (of those made) at max replicates x its epochs")


class SweepPublic(BaseModel):
    id: int
    name: str
    study: str | None
    dataset: str
    runs: int = Field(description="number of runs the sweep expanded to")
    configs: int
    created_at: datetime | None
    status_counts: StatusCounts
    spec: dict[str, Any]
    budget: Budget | None = Field(default=None, description="model-epochs used and of the fixed design (queued "
                                                            "sweeps; null for external ones)")


class Progress(BaseModel):
    """How far runs have got: what `sweeplab submit --wait` draws its bar from."""

    runs: int
    ended: int = Field(description="runs in a final status")
    running: int
    succeeded: int
    failed: int
    pruned: int = Field(0, description="runs an adaptive sweep stopped early (an intended ending)")
    epochs_done: int = Field(description="epochs trained, by every run")
    epochs_left: int = Field(description="epochs still to train, by runs not yet ended")
    more_to_come: bool = Field(False, description="the planner of an adaptive sweep will still add configs or "
                               "seeds (a search below max_configs, a race that wants more seeds): not over yet, "
                               "though every run so far has ended")


class SweepProgress(Progress):
    id: int


class SweepsProgress(BaseModel):
    sweeps: list[SweepProgress]
    total: Progress


class RunPublic(BaseModel):
    id: int
    sweep_id: int
    config_id: int
    config_label: str
    config: dict[str, Any]
    params: dict[str, Any]
    seed: int
    status: str
    source: str
    attempt: int
    max_attempts: int
    epochs: int
    last_epoch: int
    cancel_requested: bool
    worker: str | None
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    train_seconds: float
    provenance: dict[str, Any] | None = Field(
        default=None, description="where and how it trained: versions, dataset sha256, host, CPU, GPU, packed "
                                  "(fields: app.services.provenance); null before training starts")
    program: str | None = Field(default=None, description="the workers' training program it runs, if any")
    output: str | None = Field(default=None, description="a program run's last stdout and stderr (bounded); "
                                                         "only in GET /api/runs/{id}")


class WorkerPublic(BaseModel):
    """A live worker: where it runs, the training programs it offers, its last heartbeat."""

    id: str
    host: str
    pid: int
    programs: list[str]
    started_at: datetime | None
    heartbeat_at: datetime | None


class Series(BaseModel):
    epochs: list[int]
    values: list[float | None]


class RunMetrics(BaseModel):
    run_id: int
    series: dict[str, Series]


class ArtifactInfo(BaseModel):
    name: str
    content_type: str
    size: int
    url: str


class Health(BaseModel):
    status: str
    database: str
    schema_revision: str | None
    version: str


class StrictInput(BaseModel):
    """A request body: unknown fields and non-finite numbers refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EpochCreate(StrictInput):
    """One finished epoch: any metric keys; values numbers, "NaN", "Infinity", "-Infinity" or
    null (not measured). They are stored as a worker's are: infinities as such, NaN and null as
    null; reading them back answers null for all non-finite values."""

    epoch: int = Field(ge=0, le=MAX_EPOCH, description="0: before training; 1..N after each epoch")
    metrics: dict[MetricKey, float | NonFinite | None] = Field(max_length=MAX_KEYS_PER_EPOCH)
    seconds: float = Field(default=0.0, ge=0, le=1e7, description="training time of this epoch")

    def values(self) -> dict[str, float | None]:
        """The metrics as floats (inf, -inf and NaN included)."""
        return {k: float(v) if v is not None else None for k, v in self.metrics.items()}
