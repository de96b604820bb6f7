"""runs and sweeps say what they are: runs.client_token; source, kind and status held to their values

Revision ID: 0003
Revises: 0002

- `runs.client_token`: the idempotency key of an external run's create. 0001 kept it in
  `lease_token`, which is a worker's lease; existing values move.
- `runs.source` (queue | external) gets a check constraint, as `status` has; `status` also allows
  'pruned' (a run an adaptive sweep stopped early).
- `sweeps.kind` (queued | external): set from the spec ({"external": true}) for existing rows, so
  the server finds external sweeps with a query instead of reading every spec.

SQLite can neither add nor change a CHECK constraint in place, so `sweeps` and `runs` are rebuilt
(batch mode: copy into a new table, drop the old, rename). SQLite's own procedure for that is
followed (https://www.sqlite.org/lang_altertable.html, "other kinds of table schema changes"):
foreign keys off while the tables are rebuilt, since with them on dropping the old `runs` deletes
every metric, checkpoint and event of every run (ON DELETE CASCADE), and dropping `sweeps` every
run; the triggers of 0002 are dropped first and re-created verbatim after (a table's DROP takes
its triggers with it); then `PRAGMA foreign_key_check`. The pragma only takes effect outside a
transaction and sweeplab's engine begins every transaction itself, so on SQLite this revision
commits what alembic began, turns the pragma off, does its work in a transaction of its own and
commits it, then turns the pragma back on; alembic then records the revision in one more
transaction. PostgreSQL alters the tables in place, in alembic's one transaction.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as of this revision (app.models' enums may grow; a later revision then widens these).
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
STATUSES_BEFORE = RUN_STATUSES[:-1]
RUN_SOURCES = ("queue", "external")
SWEEP_KINDS = ("queued", "external")


def _one_of(column: str, values: Sequence[str]) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({listed})"


def _sqlite_foreign_keys(on: bool) -> None:
    """Set SQLite's foreign_keys pragma between two transactions (inside one it does nothing)."""
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    raw.execute("COMMIT")
    raw.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    raw.execute("BEGIN IMMEDIATE")


@contextmanager
def _tables_rebuilt() -> Iterator[None]:
    """Around batch operations that recreate tables: on SQLite, with foreign keys off and the
    triggers put back as they were (see the module docstring); elsewhere nothing to do."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    _sqlite_foreign_keys(on=False)
    triggers = bind.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name")).all()
    for name, _ in triggers:
        op.execute(f'DROP TRIGGER "{name}"')
    yield
    for _, sql in triggers:
        op.execute(sql)
    broken = bind.execute(sa.text("PRAGMA foreign_key_check")).all()
    if broken:
        raise RuntimeError(f"migration 0003 left rows whose foreign keys point nowhere: {broken[:5]}")
    _sqlite_foreign_keys(on=True)


def _mark_external_sweeps() -> None:
    sweeps = sa.table("sweeps", sa.column("kind", sa.String), sa.column("spec", sa.JSON))
    op.execute(sweeps.update().where(sweeps.c.spec["external"].as_boolean().is_(True)).values(kind="external"))


def upgrade() -> None:
    with _tables_rebuilt():
        with op.batch_alter_table("sweeps") as batch:
            batch.add_column(sa.Column("kind", sa.String(16), server_default=sa.text("'queued'"), nullable=False))
            batch.create_check_constraint(op.f("ck_sweeps_kind"), _one_of("kind", SWEEP_KINDS))
        with op.batch_alter_table("runs") as batch:
            batch.add_column(sa.Column("client_token", sa.String(64), nullable=True))
            batch.create_index(op.f("ix_runs_client_token"), ["client_token"], unique=False)
            batch.drop_constraint(op.f("ck_runs_status"), type_="check")
            batch.create_check_constraint(op.f("ck_runs_status"), _one_of("status", RUN_STATUSES))
            batch.create_check_constraint(op.f("ck_runs_source"), _one_of("source", RUN_SOURCES))
        _mark_external_sweeps()
        op.execute("UPDATE runs SET client_token = lease_token, lease_token = NULL WHERE source = 'external'")


def downgrade() -> None:
    """Back to 0002: client tokens return to lease_token; a pruned run becomes cancelled (0002 has
    no 'pruned': it was stopped before its last epoch, as a cancelled run is)."""
    op.execute("UPDATE runs SET lease_token = client_token WHERE source = 'external'")
    op.execute("UPDATE runs SET status = 'cancelled' WHERE status = 'pruned'")
    with _tables_rebuilt():
        with op.batch_alter_table("runs") as batch:
            batch.drop_constraint(op.f("ck_runs_source"), type_="check")
            batch.drop_constraint(op.f("ck_runs_status"), type_="check")
            batch.create_check_constraint(op.f("ck_runs_status"), _one_of("status", STATUSES_BEFORE))
            batch.drop_index(op.f("ix_runs_client_token"))
            batch.drop_column("client_token")
        with op.batch_alter_table("sweeps") as batch:
            batch.drop_constraint(op.f("ck_sweeps_kind"), type_="check")
            batch.drop_column("kind")
