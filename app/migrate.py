"""Migrate the database to the newest revision, once, even when many processes start together.

PostgreSQL: a session advisory lock serialises concurrent migrators; SQLite (one host): an flock
on a file beside the database. The second migrator then finds the schema at head and does nothing.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app.config import PROJECT_ROOT
from app.db import make_engine

MIGRATION_LOCK_KEY = 0x5EE9_1AB  # arbitrary, fixed: pg_advisory_lock key for migrations


def alembic_config(url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    database = make_url(str(engine.url)).database or ""
    lock_path = Path(database + ".migrate.lock") if database not in ("", ":memory:") else None
    if lock_path is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def migrate(url: str) -> str | None:
    """Upgrade URL's schema to head under a lock; returns the revision it now has."""
    engine = make_engine(url)
    try:
        with _migration_lock(engine):
            if current_revision(engine) != head_revision(url):
                command.upgrade(alembic_config(url), "head")
            return current_revision(engine)
    finally:
        engine.dispose()
