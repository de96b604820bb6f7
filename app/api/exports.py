"""Downloads of a sweep's metrics in long form: CSV and JSON Lines (no parquet: pyarrow is not a
dependency). Both stream, so a large sweep never sits in memory.

Chunks are made in the threadpool, at most EXPORT_THREADS at a time across all downloads: making
CSV is CPU work under the GIL, and 40 downloads made at once (each fills several megabytes of
socket buffers before its client's slowness stops it) would starve the event loop that answers
everyone else. Between chunks a download holds no thread, no connection and no transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import State

from app.api.deps import EngineDep
from app.services import exports as export_service
from app.spec import StoredText

router = APIRouter(prefix="/api/sweeps", tags=["exports"])
EXPORT_THREADS = 2


def _limiter(state: State) -> anyio.CapacityLimiter:
    """The app's limiter for export work, made on first use inside the running event loop."""
    if getattr(state, "export_limiter", None) is None:
        state.export_limiter = anyio.CapacityLimiter(EXPORT_THREADS)
    limiter: anyio.CapacityLimiter = state.export_limiter
    return limiter


async def _in_turns(chunks: Iterator[str], state: State) -> AsyncIterator[str]:
    """CHUNKS made one at a time in the threadpool, each waiting for its turn."""
    limiter = _limiter(state)
    while True:
        chunk = await anyio.to_thread.run_sync(next, chunks, None, limiter=limiter)
        if chunk is None:
            return
        yield chunk


def _download(request: Request, chunks: Iterator[str], media_type: str, filename: str) -> StreamingResponse:
    return StreamingResponse(_in_turns(chunks, request.app.state), media_type=media_type,
                             headers={"content-disposition": f'attachment; filename="{filename}"'})


@router.get("/{sweep_id}/metrics.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def export_metrics_csv(sweep_id: int, request: Request, engine: EngineDep,
                       keys: list[StoredText] | None = Query(None)) -> StreamingResponse:
    """Columns sweep, config, config_label, seed, run, key, epoch, value; NaN/inf empty; text
    cells that a spreadsheet would run as formulas start with a single quote."""
    rows = export_service.metrics_csv(engine, sweep_id, keys)
    return _download(request, rows, "text/csv; charset=utf-8", f"sweep-{sweep_id}-metrics.csv")


@router.get("/{sweep_id}/metrics.jsonl", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
def export_metrics_jsonl(sweep_id: int, request: Request, engine: EngineDep,
                         keys: list[StoredText] | None = Query(None)) -> StreamingResponse:
    """One JSON object per line with the CSV's columns; NaN/inf as null."""
    rows = export_service.metrics_jsonl(engine, sweep_id, keys)
    return _download(request, rows, "application/x-ndjson", f"sweep-{sweep_id}-metrics.jsonl")
