"""/api/health: is the server up and can it reach its database?"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import EngineDep
from app.errors import RETRY_AFTER_SECONDS
from app.schemas import Health

router = APIRouter(prefix="/api", tags=["health"])
VERSION = "0.1.0"


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(engine: EngineDep) -> Health | JSONResponse:
    try:
        # Read-only: on SQLite a plain connection would BEGIN IMMEDIATE and queue behind writers.
        with engine.connect().execution_options(sweeplab_readonly=True) as conn:
            conn.execute(text("SELECT 1"))
            from alembic.runtime.migration import MigrationContext

            revision = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any database failure means unhealthy
        body = Health(status="unavailable", database=type(exc).__name__, schema_revision=None, version=VERSION)
        return JSONResponse(body.model_dump(), status_code=503, headers={"retry-after": str(RETRY_AFTER_SECONDS)})
    return Health(status="ok", database=engine.dialect.name, schema_revision=revision, version=VERSION)
