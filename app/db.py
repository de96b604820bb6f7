"""Engines and sessions for SQLite (WAL, BEGIN IMMEDIATE for writes) and PostgreSQL.

SQLite: the driver runs in autocommit mode and we emit BEGIN ourselves (SQLAlchemy's documented
recipe for pysqlite), so every transaction that may write starts with BEGIN IMMEDIATE and waits on
the busy timeout instead of failing with "database is locked" when it later tries to write.
Read-only sessions (`read_session`) use a plain deferred BEGIN, which never blocks in WAL mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import Float

from app.config import Settings

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
POOL_TIMEOUT_SECONDS = 2.0
PG_CONNECT_TIMEOUT_SECONDS = 10
_engines: dict[tuple[str, float, float], Engine] = {}
_engines_lock = threading.Lock()


class db_now(FunctionElement[float]):
    """The database clock as Unix seconds (float): workers never trust their own clocks."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _db_now_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "(extract(epoch from clock_timestamp())::float8)"


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine, busy_timeout_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("sweeplab_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def make_engine(url: str, busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS,
                pool_timeout_seconds: float = POOL_TIMEOUT_SECONDS) -> Engine:
    """A new engine for URL with sweeplab's connection settings. `pool_timeout_seconds` bounds the
    wait for a pooled connection (then sqlalchemy.exc.TimeoutError, answered 503 by the server)."""
    if url.startswith("sqlite"):
        _prepare_sqlite_file(url)
        engine = create_engine(url, pool_size=10, max_overflow=20, pool_timeout=pool_timeout_seconds,
                               connect_args={"timeout": busy_timeout_seconds, "check_same_thread": False})
        _install_sqlite_hooks(engine, busy_timeout_seconds)
        return engine
    # A connect that hangs (a host gone during a failover) fails after connect_timeout and is retried.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=pool_timeout_seconds,
                         connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS})


def get_engine(url: str, busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS,
               pool_timeout_seconds: float = POOL_TIMEOUT_SECONDS) -> Engine:
    """The process-wide engine for URL and these timeouts (created once)."""
    key = (url, busy_timeout_seconds, pool_timeout_seconds)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = make_engine(url, busy_timeout_seconds, pool_timeout_seconds)
        return _engines[key]


def engine_for(settings: Settings) -> Engine:
    """The process-wide engine that SETTINGS describe (database URL, busy and pool timeouts)."""
    return get_engine(settings.database_url, settings.sqlite_busy_timeout_seconds, settings.pool_timeout_seconds)


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dialect_insert(session: Session) -> Callable[..., Any]:
    """`insert` of the session's database (PostgreSQL's or SQLite's): both have the ON CONFLICT
    clauses that idempotent writes need, which SQLAlchemy's generic insert lacks."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A short transaction that may write: commits on success, rolls back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only transaction (never takes SQLite's write lock)."""
    with engine.connect().execution_options(sweeplab_readonly=True) as conn:
        with Session(bind=conn, expire_on_commit=False) as session:
            yield session
