"""MLflow's artifacts as run artifacts (the `artifacts` table): what `mlflow.log_artifact`, `log_text`
and autolog (its model summary, checkpoints and TensorBoard logs) upload to a run.

A run's artifact URI is `mlflow-artifacts:/<experiment>/<run>/artifacts`, so the client uploads
to /api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/<path>. Each file is one row
named by its path within the run (at most NAME_CHARS characters), of at most the server's body
limit (SWEEPLAB_MAX_BODY_BYTES: 413 past it), at most MAX_FILES files and MAX_RUN_BYTES bytes a
run: this is a store for small files, not for models (logged models are refused: see
app/api/mlflow.py). Uploading a path again replaces it. Only external runs take uploads (any
status: MLflow allows them after the run ended); every run's artifacts can be listed and read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from app.db import db_now, dialect_insert, read_session, write_session
from app.errors import InvalidSpec, NotFound
from app.models import Artifact, Run, RunSource
from app.services.mlflow_run_values import row_id

NAME_CHARS = 100  # artifacts.name
CONTENT_TYPE_CHARS = 100
MAX_FILES = 200
MAX_RUN_BYTES = 20_000_000
ROOT = "artifacts"


@dataclass(frozen=True)
class Location:
    sweep_id: int
    run_id: int
    name: str  # the path within the run's artifacts; "" for the root


def locate(path: str) -> Location:
    """Where an artifact path (`<experiment>/<run>/artifacts/<path>`) points; InvalidSpec when it
    does not name a run's artifacts or goes outside them."""
    parts = [p for p in path.strip("/").split("/")]
    sweep_id, run_id = (row_id(parts[0]), row_id(parts[1])) if len(parts) >= 3 else (None, None)
    if sweep_id is None or run_id is None or parts[2] != ROOT:
        raise NotFound(f"artifact path {path[:200]!r} is not <experiment>/<run>/artifacts/...")
    rest = parts[3:]
    for p in rest:
        if p in ("", ".", "..") or "\\" in p or any(ord(c) < 32 or c == "\x7f" for c in p):
            raise InvalidSpec(f"artifact path {path[:200]!r}: empty, '.', '..', backslash or control character")
    name = "/".join(rest)
    if len(name) > NAME_CHARS:
        raise InvalidSpec(f"artifact path {name[:120]!r}…: over {NAME_CHARS} characters; this server keeps "
                          "shorter paths only")
    return Location(sweep_id, run_id, name)


def _run(s: Any, where: Location, lock: bool = False) -> Run:
    q = select(Run).where(Run.id == where.run_id, Run.sweep_id == where.sweep_id)
    run = s.scalars(q.with_for_update() if lock else q).first()
    if run is None:
        raise NotFound(f"experiment {where.sweep_id} has no run {where.run_id}")
    return run  # type: ignore[no-any-return]


def put_artifact(engine: Engine, path: str, content_type: str, data: bytes) -> None:
    where = locate(path)
    if not where.name:
        raise InvalidSpec("give the file's path after artifacts/")
    with write_session(engine) as s:
        run = _run(s, where, lock=True)
        if run.source != RunSource.EXTERNAL.value:
            raise InvalidSpec(f"run {run.id} is trained by sweeplab's workers; its artifacts are its own")
        count, size = s.execute(select(func.count(), func.coalesce(func.sum(func.length(Artifact.data)), 0))
                                .where(Artifact.run_id == run.id, Artifact.name != where.name)).one()
        if count >= MAX_FILES or size + len(data) > MAX_RUN_BYTES:
            raise InvalidSpec(f"run {run.id} keeps at most {MAX_FILES} artifacts and {MAX_RUN_BYTES} bytes in all")
        values = {"run_id": run.id, "name": where.name, "content_type": content_type[:CONTENT_TYPE_CHARS],
                  "data": data, "created_at": db_now()}
        stmt = dialect_insert(s)(Artifact).values(values)
        s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "name"], set_={
            "content_type": stmt.excluded.content_type, "data": stmt.excluded.data,
            "created_at": stmt.excluded.created_at}))


def get_artifact(engine: Engine, path: str) -> tuple[str, bytes]:
    where = locate(path)
    with read_session(engine) as s:
        _run(s, where)
        row = s.execute(select(Artifact.content_type, Artifact.data)
                        .where(Artifact.run_id == where.run_id, Artifact.name == where.name)).first()
    if row is None:
        raise NotFound(f"run {where.run_id} has no artifact {where.name!r}")
    return row.content_type, row.data


def list_artifacts(engine: Engine, path: str) -> list[dict[str, Any]]:
    """The files and folders right under PATH, as MLflow's artifact server lists them (basenames)."""
    where = locate(path)
    with read_session(engine) as s:
        _run(s, where)
        rows = s.execute(select(Artifact.name, func.length(Artifact.data))
                         .where(Artifact.run_id == where.run_id).order_by(Artifact.name)).all()
    prefix = f"{where.name}/" if where.name else ""
    files: dict[str, dict[str, Any]] = {}
    for name, size in rows:
        if not name.startswith(prefix):
            continue
        head, sep, _ = name[len(prefix):].partition("/")
        files.setdefault(head, {"path": head, "is_dir": True} if sep else
                         {"path": head, "is_dir": False, "file_size": size or 0})
    return list(files.values())
