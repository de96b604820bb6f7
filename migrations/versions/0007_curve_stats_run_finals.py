"""aggregates kept as epochs commit: curves per (config, key, epoch) and each run's final per key

Revision ID: 0007
Revises: 0006

Charts, tables and verdicts read these instead of the raw metric rows, so they answer in time
proportional to configs x epochs (curves) or runs (finals), however long the history:

- `curve_stats` (config_id, key, epoch): over the non-NULL values of that cell's runs, the count
  of finite values `n`, their `mean`, `m2` (the sum of squared deviations from the mean), `lo`,
  `hi`, and the counts of +inf and -inf values (kept apart so one inf cannot turn the sums into
  NaN; readers answer null where the raw aggregate would be inf or NaN).
- `run_finals` (run_id, key): the run's largest epoch of the key, the value there (NULL for NaN),
  and `best`, the largest non-NULL value over its epochs.

A run's change of config is now stamped with its sweep's commit sequence like a change of status
(the trigger of 0002 is recreated with config_id among its columns).

Triggers keep both, whoever writes (worker, external runs, MLflow, programs):

- insert: the new values merge into their cell with Chan et al.'s pairwise update (a Welford step
  for one value), never E[x^2] - E[x]^2; the final moves on when the epoch is not older.
- delete (a restart or a retry deletes a run's epochs): the cells and finals they touched are
  recomputed from the remaining rows, two-pass.
- a run's config changes (an MLflow run moves to the config of its params): both configs' cells
  are recomputed.

PostgreSQL: statement-level triggers with transition tables (one merge per statement, cells in
sorted order). Per config a transaction-level advisory lock (class 7291), taken in config order
before any cell: shared by writers that add values (they never wait on each other; a merge is
an atomic upsert), exclusive for a recompute, which so reads every value committed before it and
no writer adds to its cells until it commits. SQLite: row-level triggers (one writer at a time).
(Locking the cells a recompute rewrites instead deadlocked against writers in a test.) Existing rows are aggregated here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INF = {"postgresql": ("'Infinity'::float8", "'-Infinity'::float8"), "sqlite": ("9e999", "-9e999")}


def _finite(v: str, dialect: str) -> str:
    pos, neg = _INF[dialect]
    return f"({v} < {pos} AND {v} > {neg})"


def _values(where: str) -> str:
    """The non-NULL metric values as rows (config_id, key, epoch, v) of the runs' configs."""
    return ("SELECT r.config_id AS config_id, m.key AS key, m.epoch AS epoch, m.value AS v "
            f"FROM metrics m JOIN runs r ON r.id = m.run_id WHERE m.value IS NOT NULL AND {where}")


def recompute_cells(where: str, dialect: str) -> str:
    """INSERT the cells of the values matching WHERE (about `m` and `r`), two-pass."""
    fin = _finite("x.v", dialect)
    return f"""INSERT INTO curve_stats (config_id, key, epoch, n, mean, m2, lo, hi, pos_inf, neg_inf)
        SELECT x.config_id, x.key, x.epoch,
               SUM(CASE WHEN {fin} THEN 1 ELSE 0 END), mu.m,
               COALESCE(SUM(CASE WHEN {fin} THEN (x.v - mu.m) * (x.v - mu.m) END), 0),
               MIN(CASE WHEN {fin} THEN x.v END), MAX(CASE WHEN {fin} THEN x.v END),
               SUM(CASE WHEN x.v > 0 AND NOT {fin} THEN 1 ELSE 0 END),
               SUM(CASE WHEN x.v < 0 AND NOT {fin} THEN 1 ELSE 0 END)
        FROM ({_values(where)}) x
        JOIN (SELECT y.config_id, y.key, y.epoch, AVG(CASE WHEN {_finite("y.v", dialect)} THEN y.v END) AS m
              FROM ({_values(where)}) y GROUP BY y.config_id, y.key, y.epoch) mu
          ON mu.config_id = x.config_id AND mu.key = x.key AND mu.epoch = x.epoch
        GROUP BY x.config_id, x.key, x.epoch, mu.m"""


def recompute_finals(where: str) -> str:
    """INSERT the finals of the (run, key) pairs of the metric rows matching WHERE (about `m`)."""
    return f"""INSERT INTO run_finals (run_id, key, epoch, value, best)
        SELECT m.run_id, m.key, m.epoch, m.value, b.best FROM metrics m
        JOIN (SELECT m.run_id, m.key, MAX(m.epoch) AS epoch, MAX(m.value) AS best FROM metrics m
              WHERE {where} GROUP BY m.run_id, m.key) b
          ON b.run_id = m.run_id AND b.key = m.key AND b.epoch = m.epoch"""


# Chan et al.: merge a batch (excluded: its n, mean, m2) into a cell. Every expression of an
# upsert's SET reads the row as it was, so `n` here is the old count.
_MERGE = """n = {t}.n + excluded.n,
    mean = CASE WHEN excluded.n = 0 THEN {t}.mean WHEN {t}.n = 0 THEN excluded.mean
                ELSE {t}.mean + (excluded.mean - {t}.mean)
                     * CAST(excluded.n AS DOUBLE PRECISION) / ({t}.n + excluded.n) END,
    m2 = CASE WHEN excluded.n = 0 THEN {t}.m2 WHEN {t}.n = 0 THEN excluded.m2
              ELSE {t}.m2 + excluded.m2 + (excluded.mean - {t}.mean) * (excluded.mean - {t}.mean)
                   * CAST({t}.n AS DOUBLE PRECISION) * excluded.n / ({t}.n + excluded.n) END,
    lo = CASE WHEN {t}.lo IS NULL OR excluded.lo < {t}.lo THEN excluded.lo ELSE {t}.lo END,
    hi = CASE WHEN {t}.hi IS NULL OR excluded.hi > {t}.hi THEN excluded.hi ELSE {t}.hi END,
    pos_inf = {t}.pos_inf + excluded.pos_inf,
    neg_inf = {t}.neg_inf + excluded.neg_inf"""
_FINAL_MOVE = """epoch = CASE WHEN excluded.epoch >= {t}.epoch THEN excluded.epoch ELSE {t}.epoch END,
    value = CASE WHEN excluded.epoch >= {t}.epoch THEN excluded.value ELSE {t}.value END,
    best = CASE WHEN {t}.best IS NULL OR excluded.best > {t}.best THEN excluded.best ELSE {t}.best END"""


LOCK_CLASS = 7291  # pg_advisory_xact_lock(LOCK_CLASS, config id): a config's cells


def _pg_lock(configs: str, shared: bool) -> str:
    """Take the advisory lock of each config CONFIGS selects (one column), in config order."""
    kind = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    return f"""FOR c IN {configs} ORDER BY 1 LOOP
            PERFORM {kind}({LOCK_CLASS}, c);
        END LOOP;"""


_PG_NEW_CONFIGS = "SELECT DISTINCT r.config_id FROM new_rows m JOIN runs r ON r.id = m.run_id"
_PG_OLD_CONFIGS = "SELECT DISTINCT r.config_id FROM old_rows m JOIN runs r ON r.id = m.run_id"
_PG_FIN = _finite("m.value", "postgresql")
_PG_TOUCHED_CELLS = ("(SELECT DISTINCT r.config_id, m.key, m.epoch FROM old_rows m JOIN runs r ON r.id = m.run_id)")
_PG_TOUCHED_FINALS = "(SELECT DISTINCT m.run_id, m.key FROM old_rows m)"

POSTGRESQL_UP = [
    f"""CREATE FUNCTION sweeplab_curves_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE c integer;
    BEGIN
        {_pg_lock(_PG_NEW_CONFIGS, shared=True)}
        INSERT INTO curve_stats AS s (config_id, key, epoch, n, mean, m2, lo, hi, pos_inf, neg_inf)
        SELECT r.config_id, m.key, m.epoch,
               COUNT(*) FILTER (WHERE {_PG_FIN}), AVG(m.value) FILTER (WHERE {_PG_FIN}),
               COALESCE(VAR_POP(m.value) FILTER (WHERE {_PG_FIN}) * COUNT(*) FILTER (WHERE {_PG_FIN}), 0),
               MIN(m.value) FILTER (WHERE {_PG_FIN}), MAX(m.value) FILTER (WHERE {_PG_FIN}),
               COUNT(*) FILTER (WHERE m.value = 'Infinity'::float8),
               COUNT(*) FILTER (WHERE m.value = '-Infinity'::float8)
        FROM new_rows m JOIN runs r ON r.id = m.run_id WHERE m.value IS NOT NULL
        GROUP BY r.config_id, m.key, m.epoch ORDER BY r.config_id, m.key, m.epoch
        ON CONFLICT (config_id, key, epoch) DO UPDATE SET {_MERGE.format(t="s")};
        INSERT INTO run_finals AS f (run_id, key, epoch, value, best)
        SELECT DISTINCT ON (m.run_id, m.key) m.run_id, m.key, m.epoch, m.value,
               MAX(m.value) OVER (PARTITION BY m.run_id, m.key)
        FROM new_rows m ORDER BY m.run_id, m.key, m.epoch DESC
        ON CONFLICT (run_id, key) DO UPDATE SET {_FINAL_MOVE.format(t="f")};
        RETURN NULL;
    END $$""",
    f"""CREATE FUNCTION sweeplab_curves_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE c integer;
    BEGIN
        {_pg_lock(_PG_OLD_CONFIGS, shared=False)}
        DELETE FROM curve_stats s USING {_PG_TOUCHED_CELLS} t
         WHERE s.config_id = t.config_id AND s.key = t.key AND s.epoch = t.epoch;
        {recompute_cells(f"(r.config_id, m.key, m.epoch) IN {_PG_TOUCHED_CELLS}", "postgresql")};
        DELETE FROM run_finals f USING {_PG_TOUCHED_FINALS} t WHERE f.run_id = t.run_id AND f.key = t.key;
        {recompute_finals(f"(m.run_id, m.key) IN {_PG_TOUCHED_FINALS}")};
        RETURN NULL;
    END $$""",
    f"""CREATE FUNCTION sweeplab_curves_moved() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE c integer;
    BEGIN
        {_pg_lock("SELECT unnest(ARRAY[OLD.config_id, NEW.config_id])", shared=False)}
        DELETE FROM curve_stats WHERE config_id IN (OLD.config_id, NEW.config_id);
        {recompute_cells("r.config_id IN (OLD.config_id, NEW.config_id)", "postgresql")};
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER metrics_curves_insert AFTER INSERT ON metrics REFERENCING NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION sweeplab_curves_insert()""",
    """CREATE TRIGGER metrics_curves_delete AFTER DELETE ON metrics REFERENCING OLD TABLE AS old_rows
       FOR EACH STATEMENT EXECUTE FUNCTION sweeplab_curves_delete()""",
    """CREATE TRIGGER runs_curves_moved AFTER UPDATE OF config_id ON runs FOR EACH ROW
       WHEN (OLD.config_id IS DISTINCT FROM NEW.config_id) EXECUTE FUNCTION sweeplab_curves_moved()""",
]
POSTGRESQL_DOWN = [
    "DROP TRIGGER runs_curves_moved ON runs",
    "DROP TRIGGER metrics_curves_delete ON metrics",
    "DROP TRIGGER metrics_curves_insert ON metrics",
    "DROP FUNCTION sweeplab_curves_moved()",
    "DROP FUNCTION sweeplab_curves_delete()",
    "DROP FUNCTION sweeplab_curves_insert()",
]

_SQ_FIN = _finite("NEW.value", "sqlite")
_SQ_OLD_CONFIG = "(SELECT config_id FROM runs WHERE id = OLD.run_id)"
SQLITE_UP = [
    f"""CREATE TRIGGER metrics_curves_insert AFTER INSERT ON metrics WHEN NEW.value IS NOT NULL BEGIN
        INSERT INTO curve_stats (config_id, key, epoch, n, mean, m2, lo, hi, pos_inf, neg_inf)
        SELECT r.config_id, NEW.key, NEW.epoch,
               CASE WHEN {_SQ_FIN} THEN 1 ELSE 0 END, CASE WHEN {_SQ_FIN} THEN NEW.value END, 0,
               CASE WHEN {_SQ_FIN} THEN NEW.value END, CASE WHEN {_SQ_FIN} THEN NEW.value END,
               CASE WHEN NEW.value > 0 AND NOT {_SQ_FIN} THEN 1 ELSE 0 END,
               CASE WHEN NEW.value < 0 AND NOT {_SQ_FIN} THEN 1 ELSE 0 END
        FROM runs r WHERE r.id = NEW.run_id
        ON CONFLICT (config_id, key, epoch) DO UPDATE SET {_MERGE.format(t="curve_stats")};
    END""",
    f"""CREATE TRIGGER metrics_finals_insert AFTER INSERT ON metrics BEGIN
        INSERT INTO run_finals (run_id, key, epoch, value, best)
        VALUES (NEW.run_id, NEW.key, NEW.epoch, NEW.value, NEW.value)
        ON CONFLICT (run_id, key) DO UPDATE SET {_FINAL_MOVE.format(t="run_finals")};
    END""",
    f"""CREATE TRIGGER metrics_curves_delete AFTER DELETE ON metrics BEGIN
        DELETE FROM curve_stats WHERE config_id = {_SQ_OLD_CONFIG} AND key = OLD.key AND epoch = OLD.epoch;
        {recompute_cells(f"r.config_id = {_SQ_OLD_CONFIG} AND m.key = OLD.key AND m.epoch = OLD.epoch", "sqlite")};
        DELETE FROM run_finals WHERE run_id = OLD.run_id AND key = OLD.key;
        {recompute_finals("m.run_id = OLD.run_id AND m.key = OLD.key")};
    END""",
    f"""CREATE TRIGGER runs_curves_moved AFTER UPDATE OF config_id ON runs WHEN OLD.config_id IS NOT NEW.config_id
    BEGIN
        DELETE FROM curve_stats WHERE config_id IN (OLD.config_id, NEW.config_id);
        {recompute_cells("r.config_id IN (OLD.config_id, NEW.config_id)", "sqlite")};
    END""",
]
# A run's config change is stamped with its sweep's next seq too (0002 stamped status,
# cancel_requested and last_epoch): the charts' snapshots (app/services/snapshots.py) read only
# the runs stamped since their last look, and an MLflow run that moves config must be among them.
_RUN_CHANGED_0002 = ("OLD.status IS DISTINCT FROM NEW.status OR OLD.cancel_requested IS DISTINCT FROM "
                     "NEW.cancel_requested OR OLD.last_epoch IS DISTINCT FROM NEW.last_epoch")
_RUN_CHANGED = _RUN_CHANGED_0002 + " OR OLD.config_id IS DISTINCT FROM NEW.config_id"
_SQLITE_BUMP = """
    INSERT OR IGNORE INTO sweep_seqs (sweep_id, seq) VALUES (NEW.sweep_id, 0);
    UPDATE sweep_seqs SET seq = seq + 1 WHERE sweep_id = NEW.sweep_id;
    UPDATE runs SET seq = (SELECT seq FROM sweep_seqs WHERE sweep_id = NEW.sweep_id) WHERE id = NEW.id;"""


def _pg_runs_seq(columns: str, changed: str) -> list[str]:
    return ["DROP TRIGGER runs_seq_update ON runs",
            f"""CREATE CONSTRAINT TRIGGER runs_seq_update AFTER UPDATE OF {columns} ON runs
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({changed})
                EXECUTE FUNCTION sweeplab_stamp_run()"""]


def _sqlite_runs_seq(columns: str, changed: str) -> list[str]:
    return ["DROP TRIGGER runs_seq_update",
            f"""CREATE TRIGGER runs_seq_update AFTER UPDATE OF {columns} ON runs
                WHEN {changed.replace("IS DISTINCT FROM", "IS NOT")}
            BEGIN{_SQLITE_BUMP}
            END"""]


_SEQ_COLUMNS_0002 = "status, cancel_requested, last_epoch"
_SEQ_COLUMNS = _SEQ_COLUMNS_0002 + ", config_id"
POSTGRESQL_UP += _pg_runs_seq(_SEQ_COLUMNS, _RUN_CHANGED)
POSTGRESQL_DOWN = [*_pg_runs_seq(_SEQ_COLUMNS_0002, _RUN_CHANGED_0002), *POSTGRESQL_DOWN]
SQLITE_UP += _sqlite_runs_seq(_SEQ_COLUMNS, _RUN_CHANGED)

SQLITE_DOWN = [*_sqlite_runs_seq(_SEQ_COLUMNS_0002, _RUN_CHANGED_0002), "DROP TRIGGER runs_curves_moved",
               "DROP TRIGGER metrics_curves_delete", "DROP TRIGGER metrics_finals_insert",
               "DROP TRIGGER metrics_curves_insert"]


def upgrade() -> None:
    op.create_table(
        "curve_stats",
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=True),
        sa.Column("m2", sa.Float(), nullable=False),
        sa.Column("lo", sa.Float(), nullable=True),
        sa.Column("hi", sa.Float(), nullable=True),
        sa.Column("pos_inf", sa.Integer(), nullable=False),
        sa.Column("neg_inf", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["config_id"], ["configs.id"], name=op.f("fk_curve_stats_config_id_configs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("config_id", "key", "epoch", name=op.f("pk_curve_stats")),
    )
    op.create_table(
        "run_finals",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("best", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_finals_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_finals")),
    )
    dialect = op.get_bind().dialect.name
    op.execute(recompute_cells("1 = 1", dialect))
    op.execute(recompute_finals("1 = 1"))
    for statement in POSTGRESQL_UP if dialect == "postgresql" else SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in POSTGRESQL_DOWN if op.get_bind().dialect.name == "postgresql" else SQLITE_DOWN:
        op.execute(statement)
    op.drop_table("run_finals")
    op.drop_table("curve_stats")
