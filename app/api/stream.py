"""Server-Sent Events: new epochs and run status changes of a sweep, pushed as they commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import EngineDep
from app.services.charts import epochs_since, sweep_run_series
from app.services.sweeps import get_sweep_row

router = APIRouter(prefix="/api/sweeps", tags=["charts"])
POLL_SECONDS = 0.4
LOOKBACK_IDS = 2000  # PostgreSQL may commit ids out of order: look back and skip what was seen


@router.get("/{sweep_id}/series")
def read_sweep_series(sweep_id: int, engine: EngineDep,
                      keys: list[str] = Query(["loss", "accuracy", "val_loss", "val_accuracy"])) -> dict:
    """Every run's series for KEYS (columnar) and the cursor to stream from."""
    return sweep_run_series(engine, sweep_id, keys)


@router.get("/{sweep_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_sweep(sweep_id: int, request: Request, engine: EngineDep, cursor: int = Query(0, ge=0),
                       keys: list[str] | None = Query(None),
                       run: int | None = Query(None, description="only this run of the sweep")) -> StreamingResponse:
    """`event: epochs` with new metric points since CURSOR, `event: status` when run statuses change."""
    get_sweep_row(engine, sweep_id)
    last_id = request.headers.get("last-event-id", "")
    start = max(cursor, int(last_id)) if last_id.isdigit() else cursor  # a reconnecting EventSource

    lookback = LOOKBACK_IDS if engine.dialect.name == "postgresql" else 0  # SQLite commits in id order

    async def events() -> AsyncIterator[str]:
        seen: set[int] = set()  # ids inside the lookback window that were already looked at
        pos, last_statuses = start, None
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            batch = await run_in_threadpool(epochs_since, engine, sweep_id, pos, keys, 5000, run, seen, lookback)
            pos = batch["cursor"]
            if lookback:
                seen = {i for i in seen | set(batch["scanned"]) if i > pos - lookback}
            if batch["points"]:
                yield f"id: {pos}\nevent: epochs\ndata: {json.dumps({'cursor': pos, 'points': batch['points']})}\n\n"
            if batch["statuses"] != last_statuses:
                last_statuses = batch["statuses"]
                yield f"event: status\ndata: {json.dumps(last_statuses)}\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
