"""How the sweep page draws, in Debian's Chromium against a live server (issue 16's page target): its
data requests start while Plotly.js still loads, one request per chart kind draws it, the WebGL
parallel coordinates wait until their box comes near the view (saying so meanwhile), and a later
visit takes Plotly.js from the browser's cache."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from tests.e2e.chromium import BROWSER_MARKS, Page
from tests.e2e.test_pages import browser, page  # noqa: F401  (fixtures)
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

pytestmark = BROWSER_MARKS

# Every resource the page fetched: path, start and end (ms since navigation), bytes over the wire.
RESOURCES = """() => performance.getEntriesByType('resource').map((e) => ({
  path: e.name.replace(location.origin, ''), start: e.startTime, end: e.responseEnd,
  transfer: e.transferSize, body: e.decodedBodySize }))"""
MARK = "(name) => performance.getEntriesByName(name)[0]?.startTime ?? null"


def _drawn(tab: Page, path: str) -> Any:
    p = tab.open(path)
    p.wait_for_selector("body[data-stats-ready=true]", timeout=20_000)
    return p


def _api(resources: list[dict[str, Any]], sweep_id: int) -> dict[str, int]:
    """How many requests went to each of the sweep's JSON routes (aggregates, table, verdicts, ...)."""
    counts: dict[str, int] = {}
    for r in resources:
        prefix = f"/api/sweeps/{sweep_id}/"
        if r["path"].startswith(prefix):
            route = r["path"][len(prefix):].split("?")[0]
            counts[route] = counts.get(route, 0) + 1
    return counts


def test_the_data_requests_start_while_plotly_loads_one_per_chart_kind(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "draw order"})
    p = _drawn(page, f"/sweeps/{sweep.id}")
    resources = p.evaluate(RESOURCES)
    plotly_ready = p.evaluate(MARK, "sweeplab-plotly-ready")
    assert plotly_ready is not None
    for route in ("aggregates", "table", "verdicts", "importance", "parcoords"):
        first = min(r["start"] for r in resources if r["path"].startswith(f"/api/sweeps/{sweep.id}/{route}"))
        assert first < plotly_ready, f"{route} asked at {first:.0f} ms, after Plotly was ready ({plotly_ready:.0f} ms)"
    # Until the charts are drawn (the event stream opens then, and its first status event reads the
    # table and the statistics again): one request per chart kind, the verdicts with the starting
    # difference aside; every replicate's curves in one request (a sweep this small shows them all).
    drawn = p.evaluate(MARK, "sweeplab-charts-drawn")
    counts = _api([r for r in resources if r["start"] < drawn and "detect=" not in r["path"]], sweep.id)
    assert counts == {"aggregates": 1, "table": 1, "series": 1, "verdicts": 1, "importance": 1, "parcoords": 1}, counts
    # Asked once the first verdicts came, not after the statistics were drawn. (Not "before the charts
    # were drawn": the verdicts' body is read and parsed in a task that may run after Plotly's start-up
    # and the first draws, whatever the network did; seen 16 ms after them in a full suite.)
    verdicts = min((r for r in resources if "/verdicts?" in r["path"]), key=lambda r: r["start"])
    detect = next(r for r in resources if "detect=" in r["path"])
    assert detect["start"] >= verdicts["end"]
    assert detect["start"] < p.evaluate(MARK, "sweeplab-stats-drawn")  # its promise chain runs before the draw's
    assert page.errors == []


def test_the_parallel_coordinates_are_drawn_when_scrolled_near(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "below the fold"})
    p = _drawn(page, f"/sweeps/{sweep.id}")
    top, height = p.evaluate("() => [document.getElementById('parcoords-chart').getBoundingClientRect().top,"
                             " innerHeight]")
    assert top > 1.25 * height, "the parallel coordinates should start below the fold for this test"
    box = p.locator("#parcoords-chart")
    # Not drawn, and the box says so; the statistics above it are drawn.
    assert p.evaluate("() => document.body.dataset.parcoordsReady") is None
    assert p.evaluate("() => document.getElementById('parcoords-chart').data") is None
    assert box.inner_text() == "Parallel coordinates of 3 configs: drawn when scrolled into view."
    assert p.evaluate("() => document.getElementById('importance-chart').data[0].type") == "bar"
    assert p.locator("#config-table .verdict-cell").count() == 3
    box.scroll_into_view_if_needed()
    p.wait_for_selector("body[data-parcoords-ready=true]", timeout=20_000)
    lines = p.evaluate("() => document.getElementById('parcoords-chart').data[0]")
    assert lines["type"] == "parcoords" and len(lines["line"]["color"]) == 3
    assert p.locator("#parcoords-chart .parcoords").count() == 1 and "scrolled into view" not in box.inner_text()
    assert page.errors == []


def test_a_parcoords_box_in_view_is_drawn_before_the_statistics_are_ready(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "tall window"})
    page.page.set_viewport_size({"width": 1400, "height": 4000})  # the whole page in view
    p = _drawn(page, f"/sweeps/{sweep.id}")
    assert p.evaluate("() => document.body.dataset.parcoordsReady") == "true"
    assert p.evaluate("() => document.getElementById('parcoords-chart').data[0].type") == "parcoords"
    assert page.errors == []


def test_a_later_visit_takes_plotly_from_the_cache(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "cached"})
    plotly = "/vendor/plotly.min.js"
    first = [r for r in _drawn(page, f"/sweeps/{sweep.id}").evaluate(RESOURCES) if r["path"] == plotly]
    assert len(first) == 1 and first[0]["transfer"] > 1_000_000  # gzipped, still over a megabyte
    later = [r for r in _drawn(page, f"/sweeps/{sweep.id}").evaluate(RESOURCES) if r["path"] == plotly]
    assert len(later) == 1 and later[0]["transfer"] == 0 and later[0]["body"] > 4_000_000  # from the cache, whole
    assert page.errors == []
