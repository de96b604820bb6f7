"""The sweep page of a random search in Debian's Chromium against a live server: the budget line
("used N% of the model-epochs of the fixed design", N from the API's budget) and the search-progress
chart (each config's mean final metric in creation order and the best so far, the numbers the API
gives), growing when the planner adds configs; no console error."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from app.services.planner import plan
from tests.conftest import LiveServer
from tests.e2e.test_pages import CHROMIUM, Page, browser, page  # noqa: F401  (fixtures)
from tests.integration.test_search import LR, score, train_pack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
TRACES = """() => { const d = document.getElementById('search-progress-chart');
  return d && d.data ? d.data.map((t) => [t.name, t.x, t.y]) : null; }"""


def test_the_search_section_shows_budget_and_best_so_far(page: Page, engine: Engine,  # noqa: F811
                                                         live_server: LiveServer) -> None:
    spec = {"name": "lr <search>", "method": "random", "search": LR, "max_configs": 5, "search_seed": 2,
            "replicates": 2, "epochs": 2, "model": {"hidden": [4]}}
    sweep_id = httpx.post(f"{live_server.url}/api/sweeps", json=spec, timeout=30).json()["id"]
    assert train_pack(engine)  # config 0 done, config 1 queued (room for one more is planned below)
    plan(engine, sweep_id)
    p = page.open(f"/sweeps/{sweep_id}")
    p.wait_for_function("() => Number(document.getElementById('adaptive-section').dataset.drawn || 0) >= 1")
    budget = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}", timeout=30).json()["budget"]
    share = round(100 * budget["model_epochs_used"] / budget["model_epochs_fixed_design"])
    assert budget == {"model_epochs_used": 4, "model_epochs_fixed_design": 12}
    assert p.locator("#budget-line").inner_text().startswith(f"used {share}% of the model-epochs of the fixed design")
    traces = p.evaluate(TRACES)
    progress = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/search-progress", timeout=30).json()
    assert traces[0][1] == [1, 2, 3] and traces[0][2] == progress["values"]
    assert traces[1][2] == progress["best_so_far"] and traces[1][0] == "best so far"
    while train_pack(engine):  # the rest trains: the page follows on its own
        plan(engine, sweep_id)
    p.wait_for_function("() => { const d = document.getElementById('search-progress-chart');"
                        " return d && d.data && d.data[0].x.length === 5; }", timeout=20_000)
    progress = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/search-progress", timeout=30).json()
    traces = p.evaluate(TRACES)
    assert traces[1][2] == progress["best_so_far"] and max(v for v in progress["values"]) == progress["best_so_far"][-1]
    assert progress["values"] == pytest.approx([score_of(c) for c in
                                                httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/configs").json()])
    p.wait_for_function("() => document.getElementById('budget-line').textContent.startsWith('used 100%')",
                        timeout=20_000)
    assert page.errors == []


def score_of(config: dict[str, object]) -> float:
    from app.spec import TrainSpec

    return score(TrainSpec.model_validate(config["config"]))
