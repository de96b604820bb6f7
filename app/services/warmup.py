"""The server's warm-up after start, in a background thread: what a fresh process would otherwise
pay in the first requests of the sweeps people are looking at. Jinja compiles the page templates;
for each of a few recently active sweeps the caches the sweep page reads are filled by the very
service calls its requests make (the runs' snapshot, every config's curves, the table, verdicts,
importance and parallel coordinates of the primary metric); SQLAlchemy compiles their statements
and scipy / statsmodels make their first calls on the way. Every answer is cached with the version
it was made for (app.services.memo), so a change after the warm-up is picked up as after any
request: nothing it fills can be stale. Failures are logged, never raised: a warm-up is an
optimisation, the server works without one."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Engine, func, or_, select

from app import metrics
from app.db import db_now, read_session
from app.models import Run, Sweep
from app.services import charts, importance, metric_keys, parcoords, results, verdicts
from app.services import sweeps as sweep_service

log = logging.getLogger("sweeplab.warmup")
RECENT_SECONDS = 3600.0  # a sweep created, or with a run created, started, beating or finished, this recently
PAGE_SHOWN = 10  # configs the sweep page draws at first (static/bands.js MAX_SHOWN)


def recent_sweeps(engine: Engine, most: int, within: float = RECENT_SECONDS) -> list[int]:
    """Up to MOST sweeps with something done in the last WITHIN seconds (the database clock): the
    sweep created, or one of its runs created, started, heartbeating or finished; the most recent first."""
    if most <= 0:
        return []
    times = (Run.created_at, Run.started_at, Run.heartbeat_at, Run.finished_at)
    with read_session(engine) as s:
        cutoff = float(s.scalar(select(db_now())) or 0.0) - within
        latest: dict[int, float] = dict(s.execute(select(Sweep.id, Sweep.created_at)
                                                  .where(Sweep.created_at >= cutoff)).all())
        rows = s.execute(select(Run.sweep_id, *(func.max(t) for t in times))
                         .where(or_(*(t >= cutoff for t in times))).group_by(Run.sweep_id)).all()
    for sweep_id, *stamps in rows:
        latest[sweep_id] = max([latest.get(sweep_id, 0.0), *(float(t) for t in stamps if t is not None)])
    return sorted(latest, key=lambda i: (-latest[i], -i))[:most]


def warm_sweep(engine: Engine, sweep_id: int) -> None:
    """Fill the caches the sweep page's requests read, with the arguments its first requests give
    (static/sweep.js): the curves of every config (any subset is cut from them), the first configs'
    answer, the table, and the statistics of the primary metric."""
    sweep_service.read_sweep(engine, sweep_id)
    keys = metrics.curve_keys(metric_keys.sweep_keys(engine, sweep_id))
    configs = charts.sweep_configs(engine, sweep_id)
    if keys:
        charts.aggregate_json(engine, keys, sweep_id=sweep_id)
        charts.aggregate_json(engine, keys, sweep_id=sweep_id, config_ids=[c["id"] for c in configs[:PAGE_SHOWN]])
    results.final_table_json(engine, sweep_id)
    verdicts.sweep_verdicts(engine, sweep_id, metrics.PRIMARY_KEY)
    importance.sweep_importance(engine, sweep_id, metrics.PRIMARY_KEY)
    parcoords.parcoords(engine, sweep_id, metrics.PRIMARY_KEY)
    if keys:
        charts.run_series(engine, keys, sweep_id=sweep_id)  # "show every replicate", the capped default


def compile_templates(templates: Any) -> int:
    """Compile every page template once (Jinja keeps them): the first page of each kind then
    renders without compiling. One that needs what only another environment has (the report's
    filters, app.services.report) is left to it. How many were compiled."""
    env = templates.env
    compiled = 0
    for name in env.list_templates(extensions=["html"]):
        try:
            env.get_template(name)
            compiled += 1
        except TemplateError:
            log.debug("warm-up: template %s left to its own environment", name, exc_info=True)
    return compiled


def get_pages(app: Any, paths: list[str]) -> None:
    """GET each of PATHS from APP in process (an event loop of this thread's own), as a browser
    would: the first page a process renders pays for more than its template (0.2-0.3 s on a
    2-core machine, whichever page it is), and the user's first page should not. Errors logged."""
    import httpx

    async def get_all() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://warm-up") as client:
            for path in paths:
                response = await client.get(path)
                if response.status_code != 200:
                    log.warning("warm-up: GET %s answered %d", path, response.status_code)

    asyncio.run(get_all())


def warm_up(engine: Engine, templates: Any, sweeps: int, app: Any = None) -> list[int]:
    """The warm-up (see the module's doc): the templates, then up to SWEEPS recently active sweeps,
    each on its own (one that fails is logged and skipped), then, given the APP, their pages
    requested in process. The sweeps warmed."""
    t0 = time.perf_counter()
    try:
        compile_templates(templates)
    except Exception:
        log.warning("warm-up: compiling the templates failed", exc_info=True)
    try:
        ids = recent_sweeps(engine, sweeps)
    except Exception:
        log.warning("warm-up: could not read the recent sweeps; no sweep warmed", exc_info=True)
        return []
    warmed = []
    for sweep_id in ids:
        try:
            warm_sweep(engine, sweep_id)
            warmed.append(sweep_id)
        except Exception:
            log.warning("warm-up: sweep %d failed", sweep_id, exc_info=True)
    if app is not None and warmed:
        try:
            get_pages(app, [f"/sweeps/{sweep_id}" for sweep_id in warmed])
        except Exception:
            log.warning("warm-up: requesting the pages failed", exc_info=True)
    log.info("warm-up: templates and %d recent sweep(s) %s in %.1f s", len(warmed), warmed, time.perf_counter() - t0)
    return warmed
