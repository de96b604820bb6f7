"""Server-Sent Events: new epochs and run status changes of a sweep, pushed as they commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import EngineDep
from app.services.charts import sweep_run_series
from app.services.stream import Changes, changes_since, check_stream

router = APIRouter(prefix="/api/sweeps", tags=["charts"])
POLL_SECONDS = 0.4


@router.get("/{sweep_id}/series")
def read_sweep_series(sweep_id: int, engine: EngineDep,
                      keys: list[str] = Query(["loss", "accuracy", "val_loss", "val_accuracy"])) -> dict:
    """Every run's series for KEYS (columnar) and the cursor to stream from."""
    return sweep_run_series(engine, sweep_id, keys)


def sse_events(changes: Changes, first: bool) -> list[str]:
    """The events of one poll: `status` (the runs that changed; always on a stream's first poll, so a
    page knows its table may be older than the stream) and `epochs`. The last one carries the
    cursor as its id: a reconnecting EventSource sends it back in Last-Event-ID."""
    events: list[tuple[str, Any]] = []
    if changes.statuses or first:
        events.append(("status", changes.statuses))
    if changes.points:
        events.append(("epochs", {"cursor": changes.cursor, "points": changes.points}))
    out = [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]
    if out:
        out[-1] = f"id: {changes.cursor}\n{out[-1]}"
    return out


@router.get("/{sweep_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_sweep(sweep_id: int, request: Request, engine: EngineDep, cursor: int = Query(0, ge=0),
                       keys: list[str] | None = Query(None),
                       run: int | None = Query(None, description="only this run of the sweep")) -> StreamingResponse:
    """`event: epochs` with new metric points since CURSOR (a value of the sweep's commit sequence,
    as /series and /aggregates answer it), `event: status` with the runs whose status changed.
    Every database call runs in the threadpool and holds a connection only for its poll."""
    await run_in_threadpool(check_stream, engine, sweep_id, run)
    last_id = request.headers.get("last-event-id", "")
    start = max(cursor, int(last_id)) if last_id.isdigit() else cursor  # a reconnecting EventSource

    async def events() -> AsyncIterator[str]:
        pos, first = start, True
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            changes = await run_in_threadpool(changes_since, engine, sweep_id, pos, keys, run)
            for event in sse_events(changes, first):
                yield event
            pos, first = changes.cursor, False
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
