"""The server's start-up warm-up (app.services.warmup): it fills the caches of recently active
sweeps' pages so their first requests compute nothing, never makes an answer stale, leaves old
sweeps alone, and a database error during it is logged while the server starts anyway. Also the
finals and table caches that recompute only the changed configs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, update

from app import metrics
from app.config import Settings
from app.db import engine_for, write_session
from app.main import create_app
from app.models import Run, RunStatus, Sweep
from app.services import charts, finals, metric_keys, results, snapshots, verdicts, warmup
from app.services.memo import memo
from app.services.queue import claim_runs, finish_run, record_epoch
from app.services.snapshots import Scope
from tests.conftest import make_settings
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

PAGE = ("table", "verdicts?metric=val_accuracy", "importance?metric=val_accuracy", "parcoords?metric=val_accuracy")
SHOWN = (*PAGE, "verdicts?metric=val_accuracy&detect=0.01", "series", "series?max_runs=4")


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement ENGINE runs meanwhile."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def forget(engine: Engine) -> None:
    """A fresh process's caches (what a server restart empties)."""
    memo.clear()
    snapshots._latest.pop(engine, None)


def start(settings: Settings, sweeps: int) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"warm_up_sweeps": sweeps})))


def joined(client: TestClient) -> None:
    thread = client.app.state.start_up  # type: ignore[attr-defined]
    assert thread is not None
    thread.join(60)
    assert not thread.is_alive()


def grow(engine: Engine, sweep_id: int) -> None:
    """A queued run of the sweep claimed, an epoch committed and the run finished, as a worker does."""
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.RUNNING.value)
                  .values(status=RunStatus.QUEUED.value, lease_token=None, worker_id=None))
    (claim,) = claim_runs(engine, "w", 1, 60.0)
    for epoch in range(claim.last_epoch + 1, claim.epochs + 1):
        record_epoch(engine, claim, epoch, {"val_accuracy": 0.01, "accuracy": 0.02, "loss": 9.0, "val_loss": 9.0},
                     None, 60.0)
    finish_run(engine, claim, RunStatus.SUCCEEDED)


def answers(client: TestClient, sweep_id: int) -> dict[str, Any]:
    return {p: client.get(f"/api/sweeps/{sweep_id}/{p}").json() for p in SHOWN}


def test_warm_up_fills_a_recent_sweeps_caches_so_its_first_requests_compute_nothing(
        settings: Settings, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC, upto=lambda pos, seed: 2 if seed == 0 else 99)
    forget(engine)
    with start(settings, 3) as client:
        joined(client)
        served = client.app.state.engine  # type: ignore[attr-defined]
        assert served.url == engine.url
        page_keys = metrics.curve_keys(metric_keys.sweep_keys(engine, sweep.id))  # as the page asks
        keys = "&".join(f"keys={k}" for k in page_keys)
        with statements(served) as seen:
            for p in PAGE:
                assert client.get(f"/api/sweeps/{sweep.id}/{p}").status_code == 200
            assert client.get(f"/api/sweeps/{sweep.id}/aggregates?{keys}").status_code == 200
            assert client.get(f"/api/sweeps/{sweep.id}/series?{keys}").status_code == 200
        # Served from the caches: no snapshot of the runs read whole, no finals, no curve cells, no points.
        snapshot_read = "SELECT runs.id, runs.sweep_id, runs.config_id, runs.last_epoch, runs.status"
        assert not [q for q in seen if "run_finals" in q or "curve_stats" in q or "FROM metrics" in q], seen
        assert not [q for q in seen if q.startswith(snapshot_read) and "runs.seq >" not in q], seen


def test_warmed_answers_are_never_stale_after_an_epoch_and_a_finish(settings: Settings, engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC, upto=lambda pos, seed: 2 if seed == 0 else 99)
    forget(engine)
    with start(settings, 3) as client:
        joined(client)
        before = answers(client, sweep.id)
        grow(engine, sweep.id)
        after = answers(client, sweep.id)
    forget(engine)
    with start(settings, 0) as client:
        fresh = answers(client, sweep.id)  # computed from scratch in a fresh process
    assert after == fresh
    assert after["table"] != before["table"]  # the finish showed: one more succeeded run
    assert after["verdicts?metric=val_accuracy"] != before["verdicts?metric=val_accuracy"]
    assert after["series"] != before["series"] and after["series"]["cursor"] > before["series"]["cursor"]


def test_warm_up_skips_old_sweeps_and_takes_the_most_recent_first(settings: Settings, engine: Engine) -> None:
    old = seed_sweep(engine, {**WIDTHS_SPEC, "name": "old"})
    new = seed_sweep(engine, {**WIDTHS_SPEC, "name": "new"})
    newer = seed_sweep(engine, {**WIDTHS_SPEC, "name": "newer"})
    with write_session(engine) as s:
        s.execute(update(Sweep).where(Sweep.id == old.id).values(created_at=Sweep.created_at - 7200))
        s.execute(update(Run).where(Run.sweep_id == old.id).values(created_at=Run.created_at - 7200))
    assert warmup.recent_sweeps(engine, 5) == [newer.id, new.id]
    assert warmup.recent_sweeps(engine, 1) == [newer.id]
    assert warmup.recent_sweeps(engine, 0) == []
    forget(engine)
    with start(settings, 5) as client:
        joined(client)
        served = client.app.state.engine  # type: ignore[attr-defined]
    warmed = {k[2] for k in memo.items if k[0] == served.url and k[1] == "parcoords"}
    assert warmed == {new.id, newer.id}


def test_a_database_error_during_the_warm_up_is_logged_and_the_server_starts(
        tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no tables: every query of the warm-up fails
    settings = make_settings(url, data_dir, tmp_path / "artifacts", warm_up_sweeps=3)
    caplog.set_level(logging.WARNING, logger="sweeplab.warmup")
    with TestClient(create_app(settings)) as client:
        joined(client)
        assert client.get("/static/common.js").status_code == 200
    assert any("could not read the recent sweeps" in r.getMessage() for r in caplog.records)
    assert warmup.warm_up(engine_for(settings), create_app(settings).state.templates, 3) == []


def test_finals_table_and_verdicts_recompute_only_changed_configs_and_equal_a_fresh_read(engine: Engine) -> None:
    sweep = seed_sweep(engine, WIDTHS_SPEC, upto=lambda pos, seed: 2 if seed == 0 else 99)
    scope = Scope(sweep.id)
    first = finals.finals_by_key(engine, scope, ["val_accuracy", "accuracy"])
    table = results.final_table(engine, sweep.id)
    judged = verdicts.sweep_verdicts(engine, sweep.id, "val_accuracy", detect=0.01)
    grow(engine, sweep.id)
    with statements(engine) as seen:
        again = finals.finals_by_key(engine, scope, ["val_accuracy", "accuracy"])
    (read,) = [q for q in seen if "run_finals" in q]
    assert "config_id IN" in read  # only the changed config's finals were read again
    later = results.final_table(engine, sweep.id)
    rejudged = verdicts.sweep_verdicts(engine, sweep.id, "val_accuracy", detect=0.01)
    forget(engine)
    verdicts._welch_of.cache_clear()
    verdicts._summarize.cache_clear()
    assert rejudged == verdicts.sweep_verdicts(engine, sweep.id, "val_accuracy", detect=0.01) != judged
    assert again == finals.finals_by_key(engine, scope, ["val_accuracy", "accuracy"])
    assert later == results.final_table(engine, sweep.id)
    assert again != first and later != table
    def count(f: dict[str, finals.Finals]) -> int:
        return sum(len(v) for v in f["val_accuracy"].values())

    assert count(again) == count(first) + 1
    assert charts.config_infos(engine, sweep.id)  # the sweep's configs unchanged by all this
