"""The curves' cells as answers: rows of `curve_stats` (migration 0007) turned into the columnar
per-config curves the pages draw ({"epochs", "mean", "std", "min", "max", "n"}), for the charts'
aggregates and for the cells an event stream sends with the epochs that touched them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.models import CurveStat
from app.numbers import finite_or_none
from app.services.moments import sample_std

Columns = dict[str, list[Any]]  # {"epochs": [...], "mean": [...], ...}
COLUMNS = ("epochs", "mean", "std", "min", "max", "n")


def add_cell(col: Columns, c: CurveStat) -> None:
    """Append cell C to COL. A cell holding an inf answers null where the raw aggregate over its
    values would be inf or NaN."""
    infinite = c.pos_inf + c.neg_inf
    col["epochs"].append(c.epoch)
    col["n"].append(c.n + infinite)
    col["mean"].append(None if infinite else finite_or_none(c.mean))
    col["std"].append(None if infinite else finite_or_none(sample_std(c.n, c.m2)))
    col["min"].append(None if c.neg_inf else finite_or_none(c.lo))
    col["max"].append(None if c.pos_inf else finite_or_none(c.hi))


def empty() -> Columns:
    return {name: [] for name in COLUMNS}


def touched_cells(session: Session, cells: Iterable[tuple[int, str, int]]) -> dict[str, dict[str, Columns]]:
    """The current cells (config, key, epoch) of CELLS, per config id (as text) and key, epochs in
    order: what a stream sends with the points that touched them, read in the poll's snapshot."""
    wanted = sorted(set(cells))
    out: dict[str, dict[str, Columns]] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        rows = session.scalars(select_cells(chunk)).all()
        for c in rows:
            add_cell(out.setdefault(str(c.config_id), {}).setdefault(c.key, empty()), c)
    return out


def select_cells(cells: list[tuple[int, str, int]]) -> Any:
    return (select(CurveStat)
            .where(tuple_(CurveStat.config_id, CurveStat.key, CurveStat.epoch).in_(cells))
            .order_by(CurveStat.config_id, CurveStat.key, CurveStat.epoch))
