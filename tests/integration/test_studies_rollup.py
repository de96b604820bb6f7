"""The index page's roll-up of studies: per study its sweeps, runs and runs by status, and the
configs of its one-config sweeps oldest first, read in one grouped query (plus one for the
single configs), however many sweeps and runs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event, update

from app.db import write_session
from app.models import Run, RunStatus
from app.services.studies import list_studies
from app.services.sweeps import create_sweep, list_sweeps, parse_spec


def _sweep(engine: Engine, name: str, study: str | None, grid: dict[str, Any], replicates: int) -> int:
    spec = {"name": name, "dataset": "mnist", "epochs": 2, "replicates": replicates, "grid": grid}
    if study is not None:
        spec["study"] = study
    return create_sweep(engine, parse_spec(spec), 10_000, 3).id


def test_studies_are_rolled_up_from_one_grouped_query(engine: Engine) -> None:
    a1 = _sweep(engine, "a1", "alpha", {}, 3)
    a2 = _sweep(engine, "a2", "alpha", {"optimizer.learning_rate": [0.1, 0.01]}, 2)
    a3 = _sweep(engine, "a3", "alpha", {}, 1)
    b1 = _sweep(engine, "b1", "beta", {}, 2)
    _sweep(engine, "loose", None, {}, 2)
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == a1, Run.seed == 0).values(status=RunStatus.SUCCEEDED.value))
        s.execute(update(Run).where(Run.sweep_id == a2).values(status=RunStatus.FAILED.value))
        s.execute(update(Run).where(Run.sweep_id == b1).values(status=RunStatus.CANCELLED.value))
    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        got = list_studies(engine)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    queries = [q for q in statements if q.lstrip().upper().startswith("SELECT")]  # SQLite's BEGIN aside
    assert len(queries) == 2, statements

    by_name = {st["name"]: st for st in got}
    assert [st["name"] for st in got] == ["alpha", "beta"]
    for study, st in by_name.items():  # the same figures as the sweeps' own answers
        sweeps = [sw for sw in list_sweeps(engine, study)][::-1]
        assert st["sweeps"] == len(sweeps)
        assert st["runs"] == sum(sw.runs for sw in sweeps)
        expected = {k: sum(sw.status_counts.model_dump()[k] for sw in sweeps) for k in st["counts"]}
        assert st["counts"] == expected
        assert st["configs"] == [sw_config for sw in sweeps if sw.configs == 1
                                 for sw_config in [_only_config(engine, sw.id)]]
    assert by_name["alpha"]["counts"][RunStatus.SUCCEEDED.value] == 1
    assert by_name["alpha"]["counts"][RunStatus.FAILED.value] == 4
    assert len(by_name["alpha"]["configs"]) == 2  # a1 and a3, in that order (a2 is a grid)
    assert by_name["alpha"]["configs"] == [_only_config(engine, a1), _only_config(engine, a3)]


def _only_config(engine: Engine, sweep_id: int) -> int:
    from app.services.charts import sweep_configs

    (config,) = sweep_configs(engine, sweep_id)
    return int(config["id"])
