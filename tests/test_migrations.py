"""Migrations: an empty database migrated to head matches the models; migrating is idempotent."""

from __future__ import annotations

import subprocess
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from app.config import PROJECT_ROOT, Settings
from app.migrate import current_revision, head_revision, migrate
from app.models import Base
from tests.conftest import settings_env, sweeplab_command


def test_head_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(settings: Settings, engine: Engine) -> None:
    assert migrate(settings.database_url) == head_revision(settings.database_url) == current_revision(engine)


def test_concurrent_migrators_on_an_empty_database(settings: Settings, tmp_path: Path) -> None:
    """Several processes starting together migrate once, with no errors."""
    env = settings_env(settings)
    procs = [subprocess.Popen(sweeplab_command("migrate"), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(4)]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert all("database at revision 0001" in out for out in outputs)
