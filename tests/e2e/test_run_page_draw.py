"""How the run page draws, in Debian's Chromium against a live server: the run's metrics and its
stored artifacts (confusion matrix, outputs before and after training) are asked for while Plotly.js
still loads, so every chart is drawn soon after Plotly is ready (the pages check once saw the outputs
chart still empty 1.5 s after the network went quiet on a busy machine)."""

from __future__ import annotations

from sqlalchemy import Engine

from app.services.runs import list_runs
from tests.e2e.chromium import BROWSER_MARKS, Page
from tests.e2e.test_pages import browser, page  # noqa: F401  (fixtures)
from tests.e2e.test_sweep_page_draw import MARK, RESOURCES
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

pytestmark = BROWSER_MARKS


def test_the_runs_data_is_asked_for_while_plotly_loads(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "run page order"})
    run = list_runs(engine, sweep.id)[0]
    p = page.open(f"/runs/{run.id}")
    p.wait_for_selector("body[data-ready=true]", timeout=20_000)
    assert page.charts() >= 3
    plotly_ready = p.evaluate(MARK, "sweeplab-plotly-ready")
    assert plotly_ready is not None
    starts = {r["path"]: r["start"] for r in p.evaluate(RESOURCES)}
    for path in (f"/api/runs/{run.id}/metrics", f"/api/runs/{run.id}/artifacts/confusion_matrix",
                 f"/api/runs/{run.id}/artifacts/outputs_before", f"/api/runs/{run.id}/artifacts/outputs_after"):
        asked = starts[path]
        assert asked < plotly_ready, f"{path} asked at {asked:.0f} ms, after Plotly ({plotly_ready:.0f} ms)"
    assert "label 7" in p.locator("#chart-outputs").inner_text()
    assert page.errors == []
