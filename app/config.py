"""Settings read by server, worker and CLI alike (environment prefix SWEEPLAB_, optional .env)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEARTBEATS_PER_LEASE = 3  # heartbeats that fit in one lease, at least


def _default_pack_size() -> int:
    """Runs per packed model: bounded by memory so a pack of wide models still fits comfortably."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 10
    return 10 if total >= 4 * 2**30 else 4


class Settings(BaseSettings):
    """Every knob of sweeplab; each field is the env var SWEEPLAB_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SWEEPLAB_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./sweeplab-data/sweeplab.db",
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
    )
    data_dir: Path = Field(default=Path("./sweeplab-data/datasets"), description="where <dataset>.npz live")
    artifacts_dir: Path = Field(default=Path("./sweeplab-data/artifacts"), description="worker's model files")
    code_dir: Path | None = Field(
        default=None, description="worker: the folder of model builders (model.builder 'module:function'), put on "
                                  "the worker's sys.path; the server never imports from it. Unset: no builders")
    api_token: SecretStr | None = Field(default=None, description="bearer token required for changes")
    lease_seconds: float = Field(default=60.0, gt=0, description="a claimed run's lease")
    heartbeat_seconds: float = Field(default=10.0, gt=0, description="how often a worker renews leases")
    reap_seconds: float = Field(default=15.0, gt=0, description="how often a worker requeues expired leases")
    poll_seconds: float = Field(default=1.0, gt=0, description="idle worker's wait between claims")
    max_attempts: int = Field(default=3, ge=1, le=100, description="claims before a dying run is failed")
    pack_size: int = Field(default_factory=_default_pack_size, ge=1, le=256, description="runs per model")
    max_runs_per_sweep: int = Field(default=10_000, ge=1, description="largest sweep accepted")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="largest request body accepted")
    external_stale_seconds: float = Field(
        default=180.0, gt=0, description="an external run with no epoch or heartbeat for this long ends failed")
    sqlite_busy_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long a SQLite writer waits for the write lock before an error")
    pool_timeout_seconds: float = Field(
        default=2.0, gt=0, description="how long a request waits for a pooled connection before a 503")
    db_retry_seconds: float = Field(
        default=30.0, ge=0, description="how long a worker retries a failing database write before giving up")
    preload_statistics: bool = Field(
        default=True, description="server: import scipy and statsmodels in the background at start, so the "
                                  "first table, verdicts or importance request does not wait 1-3 s for them")
    warm_up_sweeps: int = Field(
        default=3, ge=0, le=50, description="server: after start (and the statistics imports), in the background, "
                                            "fill the caches of the pages of up to this many sweeps active in the "
                                            "last hour, so their first requests compute nothing; 0: no warm-up")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="sweeplab's own log lines (libraries: WARNING, unless a command's --verbose)")
    trainer: Literal["keras", "fake"] = Field(default="keras", description="fake: no TensorFlow, for tests")
    tf_threads: int = Field(default=0, ge=0, description="TensorFlow intra-op threads (0: TF decides)")
    fake_epoch_seconds: float = Field(default=0.05, ge=0, description="fake trainer: how long each epoch sleeps")
    fake_poison_seed: int | None = Field(
        default=None, description="fake trainer: a run with this seed kills its worker process (crash tests)")
    report_chromium_path: Path = Field(
        default=Path("/usr/bin/chromium"),
        description="server: the Chromium executable that prints PDF reports (never downloaded; missing: a 501)")
    programs_dir: Path | None = Field(
        default=None, description="worker: each <name>.py here is the training program <name> it offers (rescanned "
                                  "every heartbeat); unset: it offers none")
    program_kill_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="worker: how long a program has after SIGTERM (cancel, shutdown) "
                                                 "before SIGKILL")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("api_token", "fake_poison_seed", "programs_dir", "code_dir", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        """An empty variable means unset: an empty SWEEPLAB_API_TOKEN (e.g. `${SWEEPLAB_API_TOKEN:-}`
        in compose) is no token, never a token that an empty header would match."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _heartbeat_well_below_lease(self) -> Settings:
        """A lease must survive a late or failed heartbeat or two, else a busy but healthy worker
        loses its runs to the reaper."""
        if self.heartbeat_seconds > self.lease_seconds / HEARTBEATS_PER_LEASE:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most a third of lease_seconds "
                f"({self.lease_seconds:g}): set SWEEPLAB_HEARTBEAT_SECONDS <= "
                f"{self.lease_seconds / HEARTBEATS_PER_LEASE:.3g} or raise SWEEPLAB_LEASE_SECONDS")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache after changing the environment)."""
    return Settings()
