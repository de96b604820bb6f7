"""Migrations: an empty database migrated to head matches the models; migrating is idempotent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, select, text, update

from app.config import PROJECT_ROOT, Settings
from app.db import engine_for, read_session, write_session
from app.migrate import current_revision, head_revision, migrate
from app.models import Base, Metric, Run, SweepSeq
from app.services.sweeps import create_sweep, parse_spec
from tests.conftest import settings_env, sweeplab_command


def test_head_matches_the_models(settings: Settings) -> None:
    """This test's own empty database, migrated here (`engine` would hand it a copy of the
    session's migrated template)."""
    engine = engine_for(settings)
    assert current_revision(engine) is None
    migrate(settings.database_url)
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
    head = head_revision(settings.database_url)
    assert all(f"database at revision {head}" in out for out in outputs)


STREAM_TRIGGERS = {("metrics", "metrics_seq"), ("runs", "runs_seq_insert"), ("runs", "runs_seq_update")}


def test_the_commit_sequence_triggers_exist_and_stamp_rows(engine: Engine) -> None:
    """Outside what compare_metadata sees: migration 0002's triggers, which number every commit of a
    sweep for the event stream (a batch migration that recreates a table on SQLite would drop them)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.execute(text("SELECT c.relname, t.tgname FROM pg_trigger t "
                                      "JOIN pg_class c ON c.oid = t.tgrelid")).all()
        else:
            found = conn.execute(text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")).all()
    assert {tuple(r) for r in found} >= STREAM_TRIGGERS
    sweep = create_sweep(engine, parse_spec({"name": "t", "dataset": "mnist", "epochs": 2, "replicates": 2}), 10, 3)
    with write_session(engine) as s:
        (a, b) = s.scalars(select(Run.id).where(Run.sweep_id == sweep.id).order_by(Run.id)).all()
        s.execute(insert(Metric).values(run_id=a, key="loss", epoch=0, value=1.0, created_at=0.0))
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == b).values(status="running"))
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == b).values(heartbeat_at=1.0, status="running"))  # no change: no seq
    with read_session(engine) as s:
        runs = dict(s.execute(select(Run.id, Run.seq).where(Run.sweep_id == sweep.id)).all())
        metric = s.execute(select(Metric.sweep_id, Metric.seq)).one()
        counter = s.scalar(select(SweepSeq.seq).where(SweepSeq.sweep_id == sweep.id))
    # The sweep's commit: 1 (PostgreSQL: one value per commit) or 1, 2 (SQLite: one per row).
    first = {a: 1, b: 1} if engine.dialect.name == "postgresql" else {a: 1, b: 2}
    assert metric == (sweep.id, first[b] + 1) and runs == {a: first[a], b: first[b] + 2} and counter == first[b] + 2


def test_0002_numbers_what_was_written_before_it(settings: Settings) -> None:
    """A database of revision 0001 with data: after 0002 a stream from 0 sends it all, and new
    commits come after it."""
    from alembic import command

    from app.db import make_engine
    from app.migrate import alembic_config
    from app.services.stream import changes_since

    url = settings.database_url
    command.upgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO sweeps (id, name, dataset, spec, run_count, created_at) "
                              "VALUES (1, 's', 'mnist', '{}', 1, 0)"))
            conn.execute(text("INSERT INTO configs (id, sweep_id, position, key, label, params, train) "
                              "VALUES (1, 1, 0, 'k', 'base', '{}', '{}')"))
            conn.execute(text("INSERT INTO runs (id, sweep_id, config_id, seed, status, source, attempt, max_attempts,"
                              " epochs, last_epoch, cancel_requested, created_at, train_seconds) "
                              "VALUES (1, 1, 1, 0, 'running', 'queue', 1, 3, 3, 1, false, 0, 0)"))
            conn.execute(text("INSERT INTO metrics (run_id, key, epoch, value, created_at) "
                              "VALUES (1, 'loss', 0, 1.0, 0), (1, 'loss', 1, 0.5, 0)"))
        migrate(url)
        old = changes_since(engine, 1, 0)
        assert [p["epoch"] for p in old.points] == [0, 1] and old.statuses == {"1": "running"}
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO metrics (run_id, key, epoch, value, created_at) "
                              "VALUES (1, 'loss', 2, 0.2, 0)"))
        assert [p["epoch"] for p in changes_since(engine, 1, old.cursor).points] == [2]
    finally:
        engine.dispose()


def test_0003_moves_client_tokens_and_keeps_every_row(settings: Settings) -> None:
    """A database of revision 0002 holding an external run (its client token in lease_token, as
    0002 kept it) and a queued one: after 0003 the token is in client_token, the external sweep
    has kind 'external', and no row is lost to the table rebuild (on SQLite, dropping the old
    `runs` with foreign keys on would delete every metric and event). The new constraints hold."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from app.db import make_engine
    from app.migrate import alembic_config

    url = settings.database_url
    command.upgrade(alembic_config(url), "0002")
    engine = make_engine(url)
    token = "0123456789abcdef0123456789abcdef"
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO sweeps (id, name, dataset, spec, run_count, created_at) VALUES "
                              "(1, 'nb', 'external', '{\"external\": true, \"name\": \"nb\"}', 1, 0), "
                              "(2, 'q', 'mnist', '{\"name\": \"q\"}', 1, 0)"))
            conn.execute(text("INSERT INTO configs (id, sweep_id, position, key, label, params, train) "
                              "VALUES (1, 1, 0, 'k', 'base', '{}', '{}'), (2, 2, 0, 'k', 'base', '{}', '{}')"))
            conn.execute(text(
                "INSERT INTO runs (id, sweep_id, config_id, seed, status, source, attempt, max_attempts, epochs,"
                " last_epoch, cancel_requested, lease_token, created_at, train_seconds) VALUES "
                f"(1, 1, 1, 0, 'running', 'external', 1, 1, 3, 1, false, '{token}', 0, 0), "
                "(2, 2, 2, 0, 'running', 'queue', 1, 3, 3, 1, false, 'lease', 0, 0)"))
            conn.execute(text("INSERT INTO metrics (run_id, key, epoch, value, created_at) "
                              "VALUES (1, 'loss', 0, 1.0, 0), (2, 'loss', 0, 2.0, 0)"))
            conn.execute(text("INSERT INTO run_events (run_id, kind, created_at) VALUES (1, 'started', 0)"))
        migrate(url)
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT id, lease_token, client_token, seq FROM runs ORDER BY id")).all()
            kinds = conn.execute(text("SELECT id, kind FROM sweeps ORDER BY id")).all()
            counts = [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("metrics", "run_events")]
        assert [tuple(r[:3]) for r in runs] == [(1, None, token), (2, "lease", None)]
        assert [tuple(k) for k in kinds] == [(1, "external"), (2, "queued")] and counts == [2, 1]
        # The triggers came back: a status change still takes the sweep's next seq.
        with engine.begin() as conn:
            conn.execute(text("UPDATE runs SET status = 'pruned' WHERE id = 2"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT seq FROM runs WHERE id = 2")).scalar() > runs[1].seq
        for bad in ("UPDATE runs SET source = 'elsewhere' WHERE id = 1", "UPDATE sweeps SET kind = 'x' WHERE id = 1",
                    "UPDATE runs SET status = 'paused' WHERE id = 1"):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(bad))
    finally:
        engine.dispose()


def test_0005_and_0006_give_queued_configs_and_runs_their_pack_key(settings: Settings) -> None:
    """A database of revision 0004 with two queued sweeps (one config at 2 and at 4 epochs, and the
    same model at another learning rate) and an external sweep: after 0005 the queued configs share
    one pack key, the one app.packing computes, and the external config has none; after 0006 each
    queue run carries its config's key, the external run none."""
    import json

    from alembic import command

    from app.db import make_engine
    from app.migrate import alembic_config
    from app.packing import pack_key
    from app.spec import TrainSpec

    url = settings.database_url
    command.upgrade(alembic_config(url), "0004")
    engine = make_engine(url)
    trains = [TrainSpec.model_validate({"model": {"hidden": [4]}, "epochs": e, "optimizer": {"learning_rate": lr}})
              for e, lr in ((2, 0.01), (4, 0.01), (2, 0.1))]
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO sweeps (id, kind, name, dataset, spec, run_count, created_at) VALUES "
                              "(1, 'queued', 'q1', 'mnist', '{}', 1, 0), (2, 'queued', 'q2', 'mnist', '{}', 2, 0), "
                              "(3, 'external', 'nb', 'external', '{}', 1, 0)"))
            rows = [(1, 1, trains[0]), (2, 2, trains[1]), (3, 2, trains[2])]
            for config_id, sweep_id, train in rows:
                conn.execute(text("INSERT INTO configs (id, sweep_id, position, key, label, params, train) "
                                  "VALUES (:id, :sweep, :id, 'k', 'base', '{}', :train)"),
                             {"id": config_id, "sweep": sweep_id, "train": json.dumps(train.model_dump(mode="json"))})
            conn.execute(text("INSERT INTO configs (id, sweep_id, position, key, label, params, train) "
                              "VALUES (4, 3, 0, 'k', 'base', '{\"lr\": 1}', '{\"lr\": 1}')"))
            conn.execute(text("INSERT INTO runs (id, sweep_id, config_id, seed, status, source, attempt, max_attempts,"
                              " epochs, last_epoch, cancel_requested, created_at, train_seconds) VALUES "
                              "(1, 1, 1, 0, 'queued', 'queue', 0, 3, 2, -1, false, 0, 0), "
                              "(2, 2, 3, 0, 'succeeded', 'queue', 1, 3, 2, 2, false, 0, 0), "
                              "(3, 3, 4, 0, 'running', 'external', 0, 1, 1, 0, false, 0, 0)"))
        migrate(url)
        with engine.connect() as conn:
            keys = dict(conn.execute(text("SELECT id, pack_key FROM configs ORDER BY id")).all())
            run_keys = dict(conn.execute(text("SELECT id, pack_key FROM runs ORDER BY id")).all())
        assert keys == {1: pack_key(trains[0]), 2: pack_key(trains[0]), 3: pack_key(trains[0]), 4: None}
        assert run_keys == {1: pack_key(trains[0]), 2: pack_key(trains[0]), 3: None}
    finally:
        engine.dispose()


def test_0008_widens_metric_keys_and_keeps_rows_and_triggers(settings: Settings) -> None:
    """A database of revision 0007 with a run's metrics (and the aggregates its triggers keep):
    after 0008 a key of KEY_CHARS characters is stored (PostgreSQL refused it before: VARCHAR(100)),
    the old rows are all there, and the triggers of 0002 and 0007 still stamp and aggregate."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    from app.db import make_engine
    from app.metrics import KEY_CHARS
    from app.migrate import alembic_config

    url = settings.database_url
    command.upgrade(alembic_config(url), "0007")
    engine = make_engine(url)
    long_key = "k" * KEY_CHARS
    insert_metric = text("INSERT INTO metrics (run_id, key, epoch, value, created_at) VALUES (1, :key, :epoch, 0.5, 0)")
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO sweeps (id, kind, name, dataset, spec, run_count, created_at) VALUES "
                              "(1, 'external', 'nb', 'external', '{}', 1, 0)"))
            conn.execute(text("INSERT INTO configs (id, sweep_id, position, key, label, params, train) "
                              "VALUES (1, 1, 0, 'k', 'base', '{}', '{}')"))
            conn.execute(text("INSERT INTO runs (id, sweep_id, config_id, seed, status, source, attempt, max_attempts,"
                              " epochs, last_epoch, cancel_requested, created_at, train_seconds) VALUES "
                              "(1, 1, 1, 0, 'running', 'external', 0, 1, 3, 0, false, 0, 0)"))
            for epoch in (1, 2):
                conn.execute(insert_metric, {"key": "loss", "epoch": epoch})
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="too long"), engine.begin() as conn:
                conn.execute(insert_metric, {"key": long_key, "epoch": 1})
        migrate(url)
        with engine.begin() as conn:
            conn.execute(insert_metric, {"key": long_key, "epoch": 1})
            conn.execute(insert_metric, {"key": long_key, "epoch": 2})
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key, epoch, seq > 0 FROM metrics ORDER BY id")).all()
            cells = conn.execute(text("SELECT key, epoch, n FROM curve_stats ORDER BY key, epoch")).all()
            finals = conn.execute(text("SELECT key, epoch FROM run_finals ORDER BY key")).all()
            if engine.dialect.name == "sqlite":
                assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        assert [(k, e) for k, e, _ in rows] == [("loss", 1), ("loss", 2), (long_key, 1), (long_key, 2)]
        assert all(stamped for _, _, stamped in rows)  # 0002's sequence triggers
        assert cells == [(long_key, 1, 1), (long_key, 2, 1), ("loss", 1, 1), ("loss", 2, 1)]  # 0007's
        assert finals == [(long_key, 2), ("loss", 2)]
    finally:
        engine.dispose()
