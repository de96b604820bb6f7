"""The FastAPI application: API routers, pages, static files, error handlers, and the guards of
app.middleware (body limits, cross-site changes) around them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.api import charts, exports, external, health, presets, reports, runs, statistics, stream, studies, sweeps
from app.config import PROJECT_ROOT, Settings, get_settings
from app.db import engine_for
from app.errors import document_error_responses, install_error_handlers
from app.middleware import BodyLimit, CrossSiteGuard
from app.services.planner import plan_pending
from app.services.reaping import reap_all
from app.spec import SweepSpec

log = logging.getLogger("sweeplab.server")
THREADPOOL_TOKENS = 100


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description=app.description)
            spec_schema = SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec_schema.pop("$defs", {}))
            components["SweepSpec"] = spec_schema
            document_error_responses(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _widen_threadpool() -> None:
    """Give the threadpool room beyond the connection pool (30 in app.db). Sync routes wait for a
    connection in a thread (at most the pool timeout); with anyio's default of 40 threads, a burst
    of database requests would also hold up static files and other threadpool work."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, THREADPOOL_TOKENS)


def preload_statistics() -> None:
    """Import what the statistics routes need (scipy, statsmodels: 1-3 s) once the server is up,
    rather than in the first request that asks for a table, verdicts or importance; a request that
    comes meanwhile waits on Python's import lock for what is left."""
    import scipy.stats  # noqa: F401
    import statsmodels.formula.api
    import statsmodels.stats.anova
    import statsmodels.stats.power  # noqa: F401


def start_up(settings: Settings, engine: Engine, app: FastAPI) -> None:
    """The server's background work once it is up: the statistics imports, then the warm-up of
    the recently active sweeps' pages (app.services.warmup), each as its setting asks. Never raises."""
    if settings.preload_statistics:
        try:
            preload_statistics()
        except Exception:
            log.warning("preloading the statistics libraries failed", exc_info=True)
    if settings.warm_up_sweeps:
        from app.services.warmup import warm_up

        warm_up(engine, app.state.templates, settings.warm_up_sweeps, app)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = engine_for(settings)

    async def reap_forever() -> None:
        # At start (runs left by workers that died while the server was down) and then on a timer:
        # a server used only for tracking scripts has no worker to do it.
        while True:
            try:
                reaped = await run_in_threadpool(reap_all, engine, settings)
                if reaped.changed:
                    log.info("reaper: %s", reaped)
                # The planner's backstop: adaptive sweeps whose last worker died before planning them.
                await run_in_threadpool(lambda: plan_pending(engine, lease_seconds=settings.lease_seconds))
            except Exception:  # the database may be away; try again next time
                log.warning("reaper pass failed", exc_info=True)
            await asyncio.sleep(settings.reap_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _widen_threadpool()
        if settings.preload_statistics or settings.warm_up_sweeps:
            app.state.start_up = threading.Thread(target=start_up, args=(settings, engine, app),
                                                  name="start-up", daemon=True)
            app.state.start_up.start()
        reaper = asyncio.create_task(reap_forever())
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    app = FastAPI(title="sweeplab", version="0.1.0", lifespan=lifespan,
                  description="Run, watch and compare many trainings of small Keras models.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.start_up = None  # the thread of start_up, while the server runs (tests join it)
    app.state.templates = Jinja2Templates(directory=str(PROJECT_ROOT / "templates"))
    install_error_handlers(app)

    # Added last, so outermost: the body is bounded before anything else runs, then cross-site
    # changes are refused before routing.
    app.add_middleware(CrossSiteGuard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    # The reports router before the studies one: a study's name may hold "/", so /api/studies/{study}
    # takes the rest of the path, and /api/studies/{study}/report.html must be matched first.
    for router in (health.router, sweeps.router, runs.router, stream.router, presets.router, external.router,
                   exports.router, charts.router, reports.router, studies.router, statistics.router):
        app.include_router(router)
    from app import pages
    from app.api import mlflow, workers

    app.include_router(mlflow.router)  # MLflow's tracking protocol, in its own error shape
    app.include_router(workers.router)
    app.include_router(pages.router)
    app.state.templates.env.filters["path_part"] = pages.url_path_part
    app.mount("/static", StaticFiles(directory=str(PROJECT_ROOT / "static")), name="static")
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
