"""The lease a worker holds on a pack, and the thread that renews it while training blocks the
main thread.

The worker never sees the database clock, so it keeps a conservative local estimate of when its
lease runs out: the monotonic time at which the last successful renewal *started*, plus the
lease. Retries of database calls stop there (after that the runs may be someone else's), and a
pack whose lease ran out without a renewal stops training: another worker resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.retry import DatabaseUnavailable, retry_transient
from app.services.queue import Claim, LeaseState, heartbeat

log = logging.getLogger("sweeplab.worker")
T = TypeVar("T")


class Lease:
    """When this worker's lease on a pack runs out, as far as it can tell."""

    def __init__(self, seconds: float, renewed_at: float | None = None):
        self.seconds = seconds
        self._renewed_at = time.monotonic() if renewed_at is None else renewed_at
        self._lock = threading.Lock()

    def left(self) -> float:
        """Seconds until the lease runs out (negative once it has)."""
        with self._lock:
            return self._renewed_at + self.seconds - time.monotonic()

    def renewing(self, call: Callable[[], T]) -> T:
        """CALL, a write that renews the lease; once it returns, the lease counts from its start."""
        started = time.monotonic()
        result = call()
        with self._lock:
            self._renewed_at = max(self._renewed_at, started)
        return result

    def retry_seconds(self, settings: Settings) -> float:
        """How long a failing database call may be retried: db_retry_seconds, but not past the lease."""
        return max(0.0, min(settings.db_retry_seconds, self.left()))


class Heartbeat(threading.Thread):
    """Renews the pack's leases every heartbeat_seconds; notes lost and cancelled runs."""

    def __init__(self, engine: Engine, settings: Settings, claims: dict[int, Claim], active: set[int],
                 shutdown: threading.Event, lease: Lease):
        super().__init__(daemon=True, name="heartbeat")
        self.engine, self.settings, self.claims, self.shutdown = engine, settings, claims, shutdown
        self.active = active  # shared with the runner: the runs still being trained
        self.lease = lease
        self.lost: set[int] = set()
        self.cancelled: set[int] = set()
        self.finished = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.finished.wait(self.settings.heartbeat_seconds):
            with self.lock:
                live = [self.claims[i] for i in sorted(self.active) if i not in self.lost]
            if live:
                self.beat(live)

    def beat(self, live: list[Claim]) -> None:
        """One renewal, retried through database hiccups while the lease lasts."""
        def renew() -> dict[int, LeaseState]:
            return self.lease.renewing(lambda: heartbeat(self.engine, live, self.settings.lease_seconds))

        try:
            states = retry_transient(renew, self.lease.retry_seconds(self.settings), "heartbeat",
                                     stop=self.finished)
        except (DatabaseUnavailable, SQLAlchemyError) as error:
            log.warning("heartbeat failed: %s", str(error).splitlines()[0] if str(error) else type(error).__name__)
            if self.lease.left() <= 0:
                log.warning("runs %s: lease ran out without a renewal; stopping them", [c.run_id for c in live])
                with self.lock:
                    self.lost |= {c.run_id for c in live}
            return
        with self.lock:
            self.lost |= {run_id for run_id, st in states.items() if not st.held}
            self.cancelled |= {run_id for run_id, st in states.items() if st.cancel_requested}

    def should_stop(self) -> bool:
        if self.shutdown.is_set():
            return True
        with self.lock:
            return all(i in self.lost or i in self.cancelled for i in list(self.active))
