"""Server-Sent Events: new epochs and run status changes of a sweep, pushed as they commit."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.api.deps import EngineDep
from app.services.stream import POINTS_PER_POLL, Changes, changes_since, open_stream
from app.spec import StoredText

router = APIRouter(prefix="/api/sweeps", tags=["charts"])
POLL_SECONDS = 0.4
POLL_THREADS = 4
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def poll_limiter() -> anyio.CapacityLimiter:
    """At most POLL_THREADS polls at once (per event loop): many streams catching up on a big sweep
    would otherwise take the threads, and the GIL, from every other request."""
    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = anyio.CapacityLimiter(POLL_THREADS)
    return _limiters[loop]


def sse_events(changes: Changes, first: bool) -> list[str]:
    """The events of one poll: `status` (the runs that changed; always on a stream's first poll, so a
    page knows its table may be older than the stream) and `epochs`. The last one carries the
    cursor as its id: a reconnecting EventSource sends it back in Last-Event-ID."""
    events: list[tuple[str, Any]] = []
    if changes.statuses or first:
        events.append(("status", changes.statuses))
    if changes.points:
        epochs: dict[str, Any] = {"cursor": changes.cursor, "points": changes.points}
        if changes.cells is not None:
            epochs["cells"] = changes.cells
        events.append(("epochs", epochs))
    out = [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]
    if out:
        out[-1] = f"id: {changes.cursor}\n{out[-1]}"
    return out


def poll(engine: Engine, sweep_id: int, cursor: int, keys: list[str] | None, run: int | None,
         first: bool) -> tuple[Changes, str]:
    """One poll and its events as text, made in a thread: the event loop only writes them out."""
    changes = changes_since(engine, sweep_id, cursor, keys, run)
    return changes, "".join(sse_events(changes, first))


@router.get("/{sweep_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_sweep(sweep_id: int, request: Request, engine: EngineDep,
                       cursor: int | None = Query(None, ge=0, description="default: what commits from now on"),
                       keys: list[StoredText] | None = Query(None),
                       run: int | None = Query(None, description="only this run of the sweep")) -> StreamingResponse:
    """`event: epochs` with new metric points since CURSOR (a value of the sweep's commit sequence,
    as /series and /aggregates answer it) and, for a sweep's stream, `cells`: the aggregated curve
    cells those points touched, per config and key, as /aggregates answers them, read in the same
    snapshot; `event: status` with the runs whose status changed.
    Every database call runs in a thread and holds a connection only for its poll."""
    now = await run_in_threadpool(open_stream, engine, sweep_id, run)
    last_id = request.headers.get("last-event-id", "")
    given = [c for c in (cursor, int(last_id) if last_id.isdigit() else None) if c is not None]
    start = max(given) if given else now  # Last-Event-ID: a reconnecting EventSource

    async def events() -> AsyncIterator[str]:
        pos, first = start, True
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            changes, text = await anyio.to_thread.run_sync(poll, engine, sweep_id, pos, keys, run, first,
                                                           limiter=poll_limiter())
            if text:
                yield text
            pos, first = changes.cursor, False
            if len(changes.points) < POINTS_PER_POLL:  # else more is waiting: a client catching up reads on,
                await asyncio.sleep(POLL_SECONDS)  # and one that does not read blocks after one batch

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
