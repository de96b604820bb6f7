"""Bounded retries of transient database errors, with exponential backoff and full jitter.

A dropped connection (a terminated PostgreSQL backend, a failover, a PgBouncer restart), a
deadlock or serialization failure, an exhausted pool, or SQLite busy past its timeout says
nothing about the work: the same transaction, run again on a fresh connection, succeeds. Every
retried call must be idempotent (the queue's writes are: fenced updates, ON CONFLICT DO NOTHING).
SQLAlchemy's pool_pre_ping covers only idle connections; a connection that dies mid-transaction is
invalidated by SQLAlchemy and the next try checks out a new one.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

try:
    import psycopg
except ImportError:  # SQLite-only installs
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("sweeplab.db")
T = TypeVar("T")

TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})  # connection, resources, operator intervention
# SQLite's transient errors; "disk is full" as PostgreSQL's class 53 (insufficient resources) is above.
SQLITE_BUSY_TEXTS = ("database is locked", "database is busy", "database table is locked", "database or disk is full")
FIRST_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0


class DatabaseUnavailable(Exception):
    """The database kept failing with transient errors for a whole retry budget."""


def _driver_error_is_transient(error: BaseException | None) -> bool:
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES):
        return True
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        return True  # connection lost, admin shutdown, deadlock, serialization failure, ...
    if isinstance(error, sqlite3.OperationalError):
        return any(text in str(error).lower() for text in SQLITE_BUSY_TEXTS)
    return False


def is_transient(error: BaseException) -> bool:
    """Whether ERROR is a database hiccup that a retry on a fresh connection may get past."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection free in time
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or _driver_error_is_transient(error.orig)
    return _driver_error_is_transient(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def retry_transient(call: Callable[[], T], seconds: float, what: str, stop: threading.Event | None = None) -> T:
    """CALL, tried again after transient database errors until SECONDS have passed (at least one
    try) or STOP is set; then DatabaseUnavailable. Other errors pass through at once. The waits
    grow exponentially with full jitter, so workers cut off together do not come back in lock-step."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + max(0.0, seconds)
    ceiling, tries = FIRST_DELAY_SECONDS, 0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            tries += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"{what}: the database failed {tries} times in {seconds:.1f} s: {_first_line(error)}") from error
            pause = min(left, random.uniform(0, ceiling))
            log.warning("%s: transient database error (try %d), retrying in %.2f s: %s",
                        what, tries, pause, _first_line(error))
            if stop.wait(pause):
                raise DatabaseUnavailable(f"{what}: stopped while retrying: {_first_line(error)}") from error
            ceiling = min(MAX_DELAY_SECONDS, ceiling * 2)
