"""metric keys of up to 250 characters (MLflow's limit on a key), not 100

Revision ID: 0008
Revises: 0007

`metrics.key`, `curve_stats.key` and `run_finals.key` become VARCHAR(250) (app.metrics.KEY_CHARS):
MLflow lets a client log keys of up to 250 characters (its MAX_ENTITY_KEY_LENGTH), and such a
client got a 400 here past 100.

PostgreSQL: ALTER COLUMN ... TYPE VARCHAR(250); a longer varchar changes the catalog only (no
table rewrite, no index rebuild). SQLite does not enforce a VARCHAR's length, so no stored row
changes; only the declared type in the three tables' CREATE statements is edited, by SQLite's
documented procedure for schema changes that leave the stored format alone (writable_schema, the
statement edited, schema_version bumped, then an integrity check). Rebuilding the tables instead
(Alembic's batch mode) would copy every metric row and drop the triggers of 0002 and 0007.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("metrics", "curve_stats", "run_finals")


def _set_key_chars(old: int, new: int) -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "key" TYPE VARCHAR({new})')
        return
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    for table in TABLES:
        edited = conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ? AND instr(sql, ?) > 0",
            (f'"key" VARCHAR({old})', f'"key" VARCHAR({new})', table, f'"key" VARCHAR({old})')).rowcount
        if edited != 1:
            raise RuntimeError(f"table {table}: no \"key\" VARCHAR({old}) column to widen")
    conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")  # every connection rereads the schema
    conn.exec_driver_sql("PRAGMA writable_schema = OFF")
    check = conn.exec_driver_sql("PRAGMA quick_check").scalar_one()
    if check != "ok":
        raise RuntimeError(f"SQLite quick_check after widening the metric keys: {check}")


def upgrade() -> None:
    _set_key_chars(100, 250)


def downgrade() -> None:
    # PostgreSQL refuses while a key is longer than 100 characters; SQLite keeps such rows as they are.
    _set_key_chars(250, 100)
