"""Real database faults for tests: PostgreSQL backends terminated (what a failover, a PgBouncer
restart or an admin does), SQLite's write lock held by another connection past the busy timeout,
the database refusing every connection, and a fault at the Nth matching statement of an engine."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def _admin(url: str, database: str | None = None) -> Engine:
    target = make_url(url) if database is None else make_url(url).set(database=database)
    return create_engine(target, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def sqlite_path(url: str) -> str:
    return make_url(url).database or ""


def terminate_backends(url: str, pid: int | None = None) -> int:
    """Terminate every other backend of URL's database (or just PID), waiting until each is gone."""
    admin = _admin(url, "postgres")
    where = "pid = :pid" if pid is not None else "datname = :db AND pid <> pg_backend_pid()"
    try:
        with admin.connect() as conn:
            return int(conn.execute(text(f"SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                                         f"WHERE {where}"), {"pid": pid, "db": make_url(url).database}).scalar() or 0)
    finally:
        admin.dispose()


@contextlib.contextmanager
def write_lock_held(url: str) -> Iterator[None]:
    """Hold SQLite's write lock from another connection (BEGIN IMMEDIATE) for the block's duration."""
    con = sqlite3.connect(sqlite_path(url), timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield
        con.execute("COMMIT")
    finally:
        con.close()


@contextlib.contextmanager
def database_away(url: str) -> Iterator[None]:
    """The database unreachable for the block's duration. PostgreSQL: it refuses new connections
    and every open one is terminated; SQLite: another connection holds the write lock."""
    if not url.startswith("postgresql"):
        with write_lock_held(url):
            yield
        return
    name = make_url(url).database
    admin = _admin(url, "postgres")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        terminate_backends(url)
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


class Interference(threading.Thread):
    """Until stopped, a fault every PERIOD seconds: on PostgreSQL every other backend of the
    database is terminated; on SQLite the write lock is held for HOLD seconds."""

    def __init__(self, url: str, period: float, hold: float = 0.0):
        super().__init__(daemon=True, name="interference")
        self.url, self.period, self.hold = url, period, hold
        self.stopped = threading.Event()
        self.faults = 0
        self.terminated = 0

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            if self.url.startswith("postgresql"):
                self.terminated += terminate_backends(self.url)
            else:
                with write_lock_held(self.url):
                    self.stopped.wait(self.hold)
            self.faults += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


class StatementFault:
    """A real fault at the Nth statement of ENGINE that MATCHES (its SQL and parameters): on PostgreSQL the connection's
    backend is terminated just before the statement runs; on SQLite the driver's "database is
    locked" is raised, as after a busy timeout."""

    def __init__(self, engine: Engine, matches: Callable[[str, Any], bool], nth: int = 1):
        self.engine, self.matches, self.nth = engine, matches, nth
        self.seen = 0
        self.fired = 0
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if not self.matches(statement, parameters):
            return
        with self._lock:
            self.seen += 1
            if self.seen != self.nth:
                return
            self.fired += 1
        if self.engine.dialect.name == "postgresql":
            terminate_backends(str(self.engine.url.render_as_string(hide_password=False)),
                               pid=cursor.connection.info.backend_pid)
        else:
            raise sqlite3.OperationalError("database is locked")

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)


class LostCommit:
    """The transaction holding the Nth statement of ENGINE that MATCHES commits, but its answer
    is lost, as when the connection is cut during COMMIT: the error is raised after the commit."""

    def __init__(self, engine: Engine, matches: Callable[[str, Any], bool], nth: int = 1):
        self.engine, self.matches, self.nth = engine, matches, nth
        self.seen = 0
        self.fired = 0
        self._armed: int | None = None  # the thread whose transaction is to lose its answer
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(Session, "after_commit", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if self.matches(statement, parameters):
            self.seen += 1
            if self.seen == self.nth:
                self._armed = threading.get_ident()

    def _after(self, session: Session) -> None:
        if self._armed != threading.get_ident():
            return
        self._armed = None
        self.fired += 1
        if self.engine.dialect.name == "postgresql":
            import psycopg

            orig: Exception = psycopg.OperationalError("server closed the connection unexpectedly")
        else:
            orig = sqlite3.OperationalError("database is locked")
        raise sa_exc.OperationalError("COMMIT", None, orig, connection_invalidated=True)

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(Session, "after_commit", self._after)
