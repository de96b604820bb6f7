"""commit sequence per sweep: the event stream's cursor

Revision ID: 0002
Revises: 0001

Every metric row and every run change is stamped with the next value of its sweep's counter
(`sweep_seqs`) when it commits, by triggers, so every writer (worker, external runs, cancel,
retry, reaper) gets it without knowing. PostgreSQL gives all rows of one commit the same value,
SQLite one value per row. Within a sweep the order of seq is the order of commits:

- PostgreSQL: deferred constraint triggers run at COMMIT, so the counter row lock is the last lock a
  transaction takes (no lock-order deadlock with row locks taken earlier, as a BEFORE trigger would
  risk: claim's FOR UPDATE against cancel_sweep) and it is held until the commit is visible.
- SQLite: one writer at a time; AFTER triggers stamp the row they follow.

Only transactions touching two sweeps (the reaper's) can wait on each other's counters; PostgreSQL
then aborts one as a deadlock and the reaper's next round redoes it.

Caution for later revisions: an Alembic batch operation that recreates `runs` on SQLite drops its
triggers and, with foreign keys on, deletes every row that references it (DROP TABLE cascades);
tests/integration/test_migrations.py checks that the triggers exist at head and that 0002 keeps the data.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_CHANGED = ("OLD.status IS DISTINCT FROM NEW.status OR OLD.cancel_requested IS DISTINCT FROM "
               "NEW.cancel_requested OR OLD.last_epoch IS DISTINCT FROM NEW.last_epoch")

POSTGRESQL_UP = [
    # One value per transaction and sweep, remembered in a transaction-local setting: updating the
    # counter row once per stamped row would grow its chain of row versions, each update walking it
    # (20,000 rows took 17 s to commit).
    """CREATE FUNCTION sweeplab_next_seq(sweep integer) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        name text := 'sweeplab.seq_' || sweep;
        got text := current_setting(name, true);
        stamped bigint;
    BEGIN
        IF coalesce(got, '') <> '' THEN
            RETURN got::bigint;
        END IF;
        INSERT INTO sweep_seqs AS c (sweep_id, seq) VALUES (sweep, 1)
        ON CONFLICT (sweep_id) DO UPDATE SET seq = c.seq + 1
        RETURNING c.seq INTO stamped;
        PERFORM set_config(name, stamped::text, true);
        RETURN stamped;
    END $$""",
    """CREATE FUNCTION sweeplab_stamp_metric() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE metrics m SET sweep_id = r.sweep_id, seq = sweeplab_next_seq(r.sweep_id)
        FROM runs r WHERE m.id = NEW.id AND r.id = m.run_id;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION sweeplab_stamp_run() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE runs SET seq = sweeplab_next_seq(NEW.sweep_id) WHERE id = NEW.id;
        RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER metrics_seq AFTER INSERT ON metrics DEFERRABLE INITIALLY DEFERRED
       FOR EACH ROW EXECUTE FUNCTION sweeplab_stamp_metric()""",
    """CREATE CONSTRAINT TRIGGER runs_seq_insert AFTER INSERT ON runs DEFERRABLE INITIALLY DEFERRED
       FOR EACH ROW EXECUTE FUNCTION sweeplab_stamp_run()""",
    f"""CREATE CONSTRAINT TRIGGER runs_seq_update AFTER UPDATE OF status, cancel_requested, last_epoch ON runs
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({RUN_CHANGED})
       EXECUTE FUNCTION sweeplab_stamp_run()""",
]
POSTGRESQL_DOWN = [
    "DROP TRIGGER runs_seq_update ON runs",
    "DROP TRIGGER runs_seq_insert ON runs",
    "DROP TRIGGER metrics_seq ON metrics",
    "DROP FUNCTION sweeplab_stamp_run()",
    "DROP FUNCTION sweeplab_stamp_metric()",
    "DROP FUNCTION sweeplab_next_seq(integer)",
]

# SQLite: bump the counter of NEW's sweep, then copy it onto the row.
_SQLITE_BUMP = """
    INSERT OR IGNORE INTO sweep_seqs (sweep_id, seq) VALUES ({sweep}, 0);
    UPDATE sweep_seqs SET seq = seq + 1 WHERE sweep_id = {sweep};"""
_RUN_SWEEP = "(SELECT sweep_id FROM runs WHERE id = NEW.run_id)"
SQLITE_UP = [
    f"""CREATE TRIGGER metrics_seq AFTER INSERT ON metrics BEGIN{_SQLITE_BUMP.format(sweep=_RUN_SWEEP)}
        UPDATE metrics SET sweep_id = {_RUN_SWEEP},
            seq = (SELECT seq FROM sweep_seqs WHERE sweep_id = {_RUN_SWEEP}) WHERE id = NEW.id;
    END""",
    f"""CREATE TRIGGER runs_seq_insert AFTER INSERT ON runs BEGIN{_SQLITE_BUMP.format(sweep="NEW.sweep_id")}
        UPDATE runs SET seq = (SELECT seq FROM sweep_seqs WHERE sweep_id = NEW.sweep_id) WHERE id = NEW.id;
    END""",
    f"""CREATE TRIGGER runs_seq_update AFTER UPDATE OF status, cancel_requested, last_epoch ON runs
        WHEN {RUN_CHANGED.replace("IS DISTINCT FROM", "IS NOT")}
    BEGIN{_SQLITE_BUMP.format(sweep="NEW.sweep_id")}
        UPDATE runs SET seq = (SELECT seq FROM sweep_seqs WHERE sweep_id = NEW.sweep_id) WHERE id = NEW.id;
    END""",
]
SQLITE_DOWN = ["DROP TRIGGER runs_seq_update", "DROP TRIGGER runs_seq_insert", "DROP TRIGGER metrics_seq"]

# Rows written before this revision: metric ids and then run ids above them keep their order.
BACKFILL = [
    "UPDATE metrics SET sweep_id = (SELECT sweep_id FROM runs WHERE runs.id = metrics.run_id), seq = id",
    "UPDATE runs SET seq = (SELECT COALESCE(MAX(id), 0) FROM metrics) + id",
    """INSERT INTO sweep_seqs (sweep_id, seq)
       SELECT s.id, COALESCE((SELECT MAX(r.seq) FROM runs r WHERE r.sweep_id = s.id), 0) FROM sweeps s""",
]


def upgrade() -> None:
    op.create_table(
        "sweep_seqs",
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_seqs_sweep_id_sweeps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("sweep_id", name=op.f("pk_sweep_seqs")),
    )
    # Plain ALTER TABLE ADD COLUMN, never a batch: SQLite's batch recreates the table, and dropping
    # the old `runs` cascades (foreign keys are on) to every metric, checkpoint and event.
    op.add_column("runs", sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    op.add_column("metrics", sa.Column("sweep_id", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("metrics", sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    for statement in BACKFILL:
        op.execute(statement)
    op.create_index("ix_runs_sweep_id_seq", "runs", ["sweep_id", "seq"], unique=False)
    op.create_index("ix_metrics_sweep_id_seq", "metrics", ["sweep_id", "seq"], unique=False)
    for statement in POSTGRESQL_UP if op.get_bind().dialect.name == "postgresql" else SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in POSTGRESQL_DOWN if op.get_bind().dialect.name == "postgresql" else SQLITE_DOWN:
        op.execute(statement)
    op.drop_index("ix_metrics_sweep_id_seq", "metrics")
    op.drop_index("ix_runs_sweep_id_seq", "runs")
    for table, column in (("metrics", "seq"), ("metrics", "sweep_id"), ("runs", "seq")):
        op.drop_column(table, column)  # SQLite >= 3.35: ALTER TABLE DROP COLUMN, in place
    op.drop_table("sweep_seqs")
