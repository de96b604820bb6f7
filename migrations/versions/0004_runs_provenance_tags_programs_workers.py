"""runs keep their provenance, tags, program and output; live workers are recorded

Revision ID: 0004
Revises: 0003

- `runs.provenance` (JSON): where and how a run trained (seed, versions of sweeplab, Python,
  TensorFlow, Keras and NumPy, the dataset file's sha256, host, CPU, GPU, packed and pack size),
  written by the worker that trains it or sent by an external client.
- `runs.tags` (JSON): free-form tags of a run (MLflow's `set-tag`).
- `runs.program` (nullable): the name of the training program a run needs (a spec's `program:`);
  a worker claims only runs whose program it offers. Indexed with the status for the claim.
- `runs.output` (Text): the bounded tail of a program's stdout and stderr.
- `workers`: each live worker (host, pid, the programs it offers, started, last heartbeat).

Only columns are added (all nullable) and one table created, so both databases do it in place
(SQLite's ADD COLUMN keeps the table and its triggers from 0002).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("provenance", sa.JSON(), nullable=True))
    op.add_column("runs", sa.Column("tags", sa.JSON(), nullable=True))
    op.add_column("runs", sa.Column("program", sa.String(length=100), nullable=True))
    op.add_column("runs", sa.Column("output", sa.Text(), nullable=True))
    op.create_index("ix_runs_program_status", "runs", ["program", "status"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), primary_key=True),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("programs", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_runs_program_status", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        for column in ("output", "program", "tags", "provenance"):
            batch.drop_column(column)
