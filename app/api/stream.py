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
LOOKBACK_IDS = 2000  # PostgreSQL may commit ids out of order: look back and skip what was sent


@router.get("/{sweep_id}/series")
def read_sweep_series(sweep_id: int, engine: EngineDep,
                      keys: list[str] = Query(["loss", "accuracy", "val_loss", "val_accuracy"])) -> dict:
    """Every run's series for KEYS (columnar) and the cursor to stream from."""
    return sweep_run_series(engine, sweep_id, keys)


@router.get("/{sweep_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_sweep(sweep_id: int, request: Request, engine: EngineDep, cursor: int = Query(0, ge=0),
                       keys: list[str] | None = Query(None)) -> StreamingResponse:
    """`event: epochs` with new metric points since CURSOR, `event: status` when run statuses change."""
    get_sweep_row(engine, sweep_id)

    async def events() -> AsyncIterator[str]:
        sent: set[tuple[int, str, int]] = set()
        pos, last_statuses = cursor, None
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            batch = await run_in_threadpool(epochs_since, engine, sweep_id, max(0, pos - LOOKBACK_IDS), keys)
            fresh = [p for p in batch["points"] if (p["run_id"], p["key"], p["epoch"]) not in sent]
            pos = max(pos, batch["cursor"])
            if fresh:
                sent.update((p["run_id"], p["key"], p["epoch"]) for p in fresh)
                yield f"id: {pos}\nevent: epochs\ndata: {json.dumps({'cursor': pos, 'points': fresh})}\n\n"
            if batch["statuses"] != last_statuses:
                last_statuses = batch["statuses"]
                yield f"event: status\ndata: {json.dumps(last_statuses)}\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
