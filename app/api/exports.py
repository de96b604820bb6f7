"""Downloads of a sweep's metrics in long form: CSV and JSON Lines (no parquet: pyarrow is not a
dependency). Both stream, so a large sweep never sits in memory."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.api.deps import EngineDep
from app.services import exports as export_service

router = APIRouter(prefix="/api/sweeps", tags=["exports"])


def _download(body: object, media_type: str, filename: str) -> StreamingResponse:
    return StreamingResponse(body, media_type=media_type,  # type: ignore[arg-type]
                             headers={"content-disposition": f'attachment; filename="{filename}"'})


@router.get("/{sweep_id}/metrics.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def export_metrics_csv(sweep_id: int, engine: EngineDep, keys: list[str] | None = Query(None)) -> StreamingResponse:
    """Columns sweep, config, config_label, seed, run, key, epoch, value; NaN/inf empty."""
    rows = export_service.metrics_csv(engine, sweep_id, keys)
    return _download(rows, "text/csv; charset=utf-8", f"sweep-{sweep_id}-metrics.csv")


@router.get("/{sweep_id}/metrics.jsonl", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
def export_metrics_jsonl(sweep_id: int, engine: EngineDep,
                         keys: list[str] | None = Query(None)) -> StreamingResponse:
    """One JSON object per line with the CSV's columns; NaN/inf as null."""
    rows = export_service.metrics_jsonl(engine, sweep_id, keys)
    return _download(rows, "application/x-ndjson", f"sweep-{sweep_id}-metrics.jsonl")
