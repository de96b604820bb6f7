"""The worker's row in the workers table (app.services.workers): registered when it starts,
renewed every heartbeat_seconds with the programs its folder holds now (rescanned first), removed
when it stops. A worker killed outright leaves its row behind; other workers' heartbeats delete it
once it is DEAD_AFTER_LEASES leases old, and nobody lists it meanwhile."""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.retry import DatabaseUnavailable, retry_transient
from app.services import workers
from worker.programs import ProgramCatalog

log = logging.getLogger("sweeplab.worker")


class Presence(threading.Thread):
    """Keeps this worker's row alive while it runs (its own thread: training blocks the main one)."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str, catalog: ProgramCatalog):
        super().__init__(daemon=True, name="presence")
        self.engine, self.settings, self.worker_id, self.catalog = engine, settings, worker_id, catalog
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.stopped = threading.Event()

    def beat(self) -> bool:
        """One renewal (the programs rescanned first); False if the database would not take it."""
        programs = self.catalog.rescan()
        try:
            retry_transient(lambda: workers.beat(self.engine, self.worker_id, self.host, self.pid, programs,
                                                 self.settings.lease_seconds),
                            self.settings.heartbeat_seconds, "worker heartbeat", stop=self.stopped)
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("worker heartbeat failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        return True

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_seconds):
            self.beat()

    def stop(self) -> None:
        """Stop renewing and take the row away (if the database answers; else it dies of age)."""
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=self.settings.heartbeat_seconds + 1)
        try:
            retry_transient(lambda: workers.remove(self.engine, self.worker_id), self.settings.heartbeat_seconds,
                            "worker deregistration")
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("could not remove this worker's row: %s", str(exc).splitlines()[0] if str(exc) else exc)
