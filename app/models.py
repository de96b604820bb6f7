"""SQLAlchemy tables: sweeps, configs, runs, metrics (long form), artifacts, checkpoints, run events.

Timestamps are Unix seconds (float) from the database clock (`db_now`), so comparisons of leases
never depend on a worker's clock and behave the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import db_now
from app.metrics import KEY_CHARS
from app.statuses import RunStatus as RunStatus  # spelled there (stdlib only: the client reads it too)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigId = BigInteger().with_variant(Integer(), "sqlite")


class RunSource(enum.StrEnum):
    """Who trains a run: sweeplab's workers (claimed from the queue) or a client of the external-run API."""

    QUEUE = "queue"
    EXTERNAL = "external"


class SweepKind(enum.StrEnum):
    """A sweep expanded from a spec into queued runs, or one that external runs join by name."""

    QUEUED = "queued"
    EXTERNAL = "external"


def one_of(column: str, values: type[enum.StrEnum]) -> CheckConstraint:
    """A check constraint named after COLUMN that holds it to the members of VALUES."""
    listed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Sweep(Base):
    __tablename__ = "sweeps"
    __table_args__ = (one_of("kind", SweepKind),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=SweepKind.QUEUED.value,
                                      server_default=text(f"'{SweepKind.QUEUED.value}'"))
    name: Mapped[str] = mapped_column(String(200))
    study: Mapped[str | None] = mapped_column(String(200), index=True)
    dataset: Mapped[str] = mapped_column(String(50))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    run_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float, default=db_now())


class Config(Base):
    """One grid combination of a sweep: the swept values and the full training settings."""

    __tablename__ = "configs"
    __table_args__ = (UniqueConstraint("sweep_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(32), index=True)
    label: Mapped[str] = mapped_column(String(500))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    train: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Which queued configs' runs may train in one pack (app/packing.py; 0005), copied to their runs
    # (0006) so the claim reads one table; NULL for external ones.
    pack_key: Mapped[str | None] = mapped_column(String(32), index=True)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        one_of("status", RunStatus),
        one_of("source", RunSource),
        Index("ix_runs_status_id", "status", "id"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
        Index("ix_runs_sweep_id_seq", "sweep_id", "seq"),
        Index("ix_runs_program_status", "program", "status"),
        Index("ix_runs_pack_key_status_id", "pack_key", "status", "id"),  # the claim's siblings (0006)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("configs.id", ondelete="CASCADE"), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    source: Mapped[str] = mapped_column(String(16), default=RunSource.QUEUE.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    epochs: Mapped[int] = mapped_column(Integer)
    last_epoch: Mapped[int] = mapped_column(Integer, default=-1)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))  # the worker's lease (queue runs)
    client_token: Mapped[str | None] = mapped_column(String(64), index=True)  # idempotency key (external runs)
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, default=db_now())
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))  # see SweepSeq
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # where and how it trained (0004)
    tags: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # free-form tags (MLflow's set-tag)
    program: Mapped[str | None] = mapped_column(String(100))  # the training program it needs, if any
    output: Mapped[str | None] = mapped_column(Text)  # bounded tail of a program's stdout and stderr
    pack_key: Mapped[str | None] = mapped_column(String(32))  # its config's (app/packing.py); NULL: external


class Worker(Base):
    """A live worker: where it runs, which programs it offers, when it last said it is alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    programs: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)


class Metric(Base):
    """One value of one key at one epoch of one run.

    Non-finite values are stored, never refused, one way whoever reports them (`metric_value`):
    inf and -inf as the float itself (both databases hold it), NaN as NULL (SQLite's REAL cannot
    hold NaN, so PostgreSQL stores NULL too). The API answers null for all three (JSON has none)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "key", "epoch"), Index("ix_metrics_sweep_id_seq", "sweep_id", "seq"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(KEY_CHARS))
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, default=db_now())
    # Both set when the row commits (SweepSeq); the run's sweep, copied so the stream reads one index.
    sweep_id: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


def metric_value(value: float | None) -> float | None:
    """How a reported value is stored (see Metric): the float, inf and -inf included; NULL for NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class SweepSeq(Base):
    """A sweep's commit sequence: the value the event stream's cursor counts in.

    Triggers of migration 0002 (not the writers) stamp every metric row as it is inserted and every
    run as it is inserted or changes status, cancel_requested or last_epoch with the next value of
    its sweep's counter, at commit (one value per commit on PostgreSQL, one per row on SQLite):
    PostgreSQL takes the counter row lock in a deferred constraint trigger, as the last lock of the
    transaction, and holds it until the commit is visible; SQLite has one writer at a time. So
    within a sweep the order of seq is the order of commits, and a reader that sees the counter at
    N sees every row stamped up to N: a cursor never skips a row."""

    __tablename__ = "sweep_seqs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class Artifact(Base):
    """Small run outputs kept in the database so any server can serve them (a few hundred KB)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, default=db_now())


class CurveStat(Base):
    """One cell of a config's curves: over the non-NULL values its runs logged for KEY at EPOCH, the
    count, mean, sum of squared deviations (`m2`), min and max of the finite ones, and how many
    were +inf / -inf. Kept by the database's triggers as metric rows are inserted or deleted and
    as runs change config (migration 0007); never written by the application."""

    __tablename__ = "curve_stats"

    config_id: Mapped[int] = mapped_column(ForeignKey("configs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_CHARS), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)  # finite values
    mean: Mapped[float | None] = mapped_column(Float)
    m2: Mapped[float] = mapped_column(Float)
    lo: Mapped[float | None] = mapped_column(Float)
    hi: Mapped[float | None] = mapped_column(Float)
    pos_inf: Mapped[int] = mapped_column(Integer)
    neg_inf: Mapped[int] = mapped_column(Integer)


class RunFinal(Base):
    """A run's last logged epoch of KEY, the value there (NULL for NaN) and its largest value over
    epochs (`best`), kept by triggers like CurveStat (migration 0007)."""

    __tablename__ = "run_finals"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_CHARS), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    best: Mapped[float | None] = mapped_column(Float)


class Checkpoint(Base):
    """The latest finished epoch's weights and optimizer state (npz), written with its metrics."""

    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Float, default=db_now())


class RunEvent(Base):
    """An audit trail per run: claimed, resumed, requeued, released, cancelled, failed, succeeded."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=db_now())

