"""Each sweep's best config, as the index page's "best config" column shows it: the highest mean
final val_accuracy over succeeded replicates, with a two-pass sample std (app.services.moments)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.metrics import PRIMARY_KEY
from app.services import results
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep, study_curve


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def agreeing(pos: int, seed: int, epoch: int) -> dict[str, float | None]:
    """Replicates whose final val_accuracy agree to 1e-9 (config 1 a little better than config 0)."""
    return {PRIMARY_KEY: 0.9 + 0.01 * pos + seed * 1e-9}


def identical(pos: int, seed: int, epoch: int) -> dict[str, float | None]:
    return {PRIMARY_KEY: 0.1}


def test_replicates_that_agree_to_1e9_have_their_tiny_std(engine: Engine) -> None:
    """E[x^2] - E[x]^2 loses every digit here (its error, ~1e-8, is ten times the std itself)."""
    spec = {**WIDTHS_SPEC, "replicates": 5, "grid": {"model.hidden": [[8], [32]]}}
    sweep = seed_sweep(engine, spec, curve=agreeing)
    best = results.best_configs(engine, [sweep.id])[sweep.id]
    xs = np.array([agreeing(1, seed, 4)[PRIMARY_KEY] for seed in range(5)])
    assert best["label"] == "hidden=[32]" and best["n"] == 5
    assert best["mean"] == pytest.approx(xs.mean(), abs=1e-15)
    assert best["std"] == pytest.approx(xs.std(ddof=1), rel=1e-6)


def test_identical_replicates_have_no_spread(engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "grid": {}}, curve=identical)
    best = results.best_configs(engine, [sweep.id])[sweep.id]
    assert best["n"] == 3 and best["mean"] == pytest.approx(0.1, abs=1e-15)
    assert best["std"] is not None and 0.0 <= best["std"] < 1e-15


def test_one_replicate_has_a_mean_and_no_std(engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "grid": {}, "replicates": 1})
    assert results.best_configs(engine, [sweep.id])[sweep.id]["std"] is None


def _best_cell(page: str, sweep_id: int) -> str:
    row = re.search(rf'<tr data-sweep-id="{sweep_id}">(.*?)</tr>', page, re.S)
    assert row is not None, f"no row for sweep {sweep_id}"
    cell = re.search(r'<td class="num best">(.*?)</td>', row.group(1), re.S)
    assert cell is not None
    return html.unescape(cell.group(1))


def test_index_page_shows_each_sweeps_best_config(client: TestClient, engine: Engine) -> None:
    """Mean ± std in percent of the best config's final val_accuracy, its label for a grid, a dash
    for a sweep with no succeeded run."""
    grid = seed_sweep(engine, WIDTHS_SPEC)  # later configs are better: hidden=[128] wins
    unfinished = seed_sweep(engine, {**WIDTHS_SPEC, "name": "unfinished", "grid": {}}, upto=lambda pos, seed: 2)
    page = client.get("/", headers={"accept": "text/html"}).text
    xs = np.array([study_curve(2, seed, 4)[PRIMARY_KEY] for seed in range(3)])
    cell = _best_cell(page, grid.id)
    assert f"{100 * xs.mean():.2f} ± {100 * xs.std(ddof=1):.2f}</span>" in cell
    assert 'title="hidden=[128], over 3 replicates"' in cell and "hidden=[128]</small>" in cell
    empty = _best_cell(page, unfinished.id)
    assert "\N{EN DASH}" in empty and "±" not in empty
