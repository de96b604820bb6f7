"""One vocabulary: every page carries the metric and status catalogues as JSON (app/metrics.py,
app/statuses.py) and draws from them; a key only an external run reports is drawn on the sweep and
run pages; a chart with nothing to draw says what it waits for; progress bars follow the
catalogue's order. The browser tests run in Debian's Chromium against a live server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app import metrics, statuses
from app.config import Settings
from app.db import write_session
from app.main import create_app
from app.models import Run, RunStatus
from app.services.runs import list_runs
from tests.conftest import LiveServer
from tests.e2e.test_pages import CHROMIUM, Page, browser, page  # noqa: F401  (fixtures)
from tests.factories import make_sweep
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

VOCABULARY = re.compile(r'<script type="application/json" id="sweeplab-vocabulary">(.*?)</script>', re.S)
EXTERNAL_KEY = "f1_macro"  # in no catalogue: only the external run below reports it


def in_browser(test: Any) -> Any:
    for mark in (pytest.mark.browser, pytest.mark.slow,
                 pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")):
        test = mark(test)
    return test


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def vocabulary_of(html: str) -> dict[str, Any]:
    found = VOCABULARY.search(html)
    assert found, "the page carries no vocabulary"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def external_run(client: httpx.Client | TestClient, epochs: int = 3) -> dict[str, Any]:
    """An external run logging the catalogue's loss and a key of its own, then finishing."""
    run: dict[str, Any] = client.post("/api/external/runs", json={
        "sweep": "notebook", "config": {"hidden": [32]}, "seed": 0, "epochs": epochs}).json()
    for epoch in range(1, epochs + 1):
        body = {"epoch": epoch, "metrics": {metrics.LOSS: 1 / epoch, EXTERNAL_KEY: 0.5 + epoch / 10}}
        assert client.post(f"/api/runs/{run['id']}/epochs", json=body).status_code == 200
    return run


def test_every_page_carries_the_catalogues(api: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "widths"})
    run = list_runs(engine, sweep.id)[0]
    config = api.get(f"/api/sweeps/{sweep.id}/configs").json()[0]["id"]
    for path in ("/", f"/?study=x&status={RunStatus.PRUNED.value}", "/sweeps/new", f"/sweeps/{sweep.id}",
                 f"/runs/{run.id}", "/compare", f"/compare?configs={config}", "/datasets/mnist"):
        response = api.get(path)
        assert response.status_code == 200, path
        vocab = vocabulary_of(response.text)
        assert [m["key"] for m in vocab["metrics"]][:len(metrics.CATALOGUE)] == [m.key for m in metrics.CATALOGUE]
        assert vocab["statuses"] == statuses.catalogue_json(), path
        assert (vocab["primary"], vocab["finals"]) == (metrics.PRIMARY_KEY, list(metrics.FINAL_KEYS))
    assert {s["value"] for s in statuses.catalogue_json()} == {s.value for s in RunStatus}
    assert statuses.is_final(RunStatus.PRUNED) and not statuses.can_cancel({RunStatus.PRUNED.value: 3})


def test_pages_spell_no_status_or_metric_of_their_own(api: TestClient, engine: Engine) -> None:
    """The status colours come from the catalogue too (a <style> of base.html, not sweeplab.css)."""
    html = api.get("/").text
    for s in statuses.CATALOGUE:
        assert f".progress .bar.{s.status.value} {{ background: {s.bar}; }}" in html
    css = api.get("/static/sweeplab.css").text
    assert not any(f".{s.value}" in css for s in RunStatus)


def test_the_sweep_and_run_pages_list_an_external_key(api: TestClient) -> None:
    run = external_run(api)
    sweep_html = api.get(f"/sweeps/{run['sweep_id']}").text
    data = json.loads(re.search(r'<script id="sweep-data" type="application/json">(.*?)</script>', sweep_html,
                                re.S).group(1))  # type: ignore[union-attr]
    assert data["keys"] == [metrics.LOSS, EXTERNAL_KEY]
    described = {m["key"]: m for m in vocabulary_of(sweep_html)["metrics"]}
    assert described[EXTERNAL_KEY] == {**metrics.describe(EXTERNAL_KEY).__dict__}
    run_vocab = vocabulary_of(api.get(f"/runs/{run['id']}").text)
    assert EXTERNAL_KEY in {m["key"] for m in run_vocab["metrics"]}


# ---- in the browser ----------------------------------------------------------------------------

CHART_KEYS = "() => [...document.querySelectorAll('#curve-charts .chart[data-key]')].map((d) => d.dataset.key)"
POINTS_OF = "(id) => (document.getElementById(id).data || []).reduce((n, t) => n + ((t.x && t.x.length) || 0), 0)"


@in_browser
def test_a_key_only_an_external_run_reports_is_drawn(page: Page, live_server: LiveServer) -> None:  # noqa: F811
    with httpx.Client(base_url=live_server.url) as client:
        run = external_run(client)
    p = page.open(f"/sweeps/{run['sweep_id']}")
    assert p.evaluate(CHART_KEYS) == [metrics.LOSS, EXTERNAL_KEY]
    assert p.evaluate(POINTS_OF, f"curve-{EXTERNAL_KEY}") >= 3  # the mean curve of its one config
    assert "f1 macro" in (p.locator(f"#curve-{EXTERNAL_KEY} .gtitle").text_content() or "")
    page.shot("vocabulary-external-sweep")
    p = page.open(f"/runs/{run['id']}")
    names = p.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap((d) => d.data || [])"
                       ".map((t) => t.name)")
    assert metrics.describe(EXTERNAL_KEY).title in names and metrics.describe(metrics.LOSS).title in names
    page.shot("vocabulary-external-run")
    assert page.errors == []


@in_browser
def test_charts_with_nothing_to_draw_say_what_they_wait_for(page: Page, engine: Engine,  # noqa: F811
                                                            live_server: LiveServer) -> None:
    sweep = make_sweep(engine, name="waiting", replicates=20, grid={"model.hidden": [[4], [8], [16], [32]]})
    assert sweep.runs == 80
    p = page.open(f"/sweeps/{sweep.id}")
    assert p.locator("#curve-empty").inner_text() == "80 runs queued, waiting for a worker."
    assert p.locator("#curve-charts .js-plotly-plot").count() == 0  # no empty axes
    assert p.locator("#sweep-final").inner_text() == "No run has succeeded yet: 80 runs queued."
    assert p.locator("#sweep-final.js-plotly-plot").count() == 0
    page.shot("vocabulary-empty-sweep")
    run = list_runs(engine, sweep.id)[0]
    p = page.open(f"/runs/{run.id}")
    assert p.locator("#chart-run").inner_text() == "This run is queued, waiting for a worker."
    config = httpx.get(f"{live_server.url}/api/sweeps/{sweep.id}/configs").json()[0]["id"]
    p = page.open(f"/compare?configs={config}")
    assert p.locator("#compare-empty").inner_text() == "20 runs queued, waiting for a worker."
    assert p.locator("#compare-final").inner_text() == "No run has succeeded yet: 20 runs queued."
    assert page.errors == []


@in_browser
def test_progress_bars_follow_the_catalogue_order(page: Page, engine: Engine) -> None:  # noqa: F811
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "mixed"}, upto=lambda pos, seed: 9 if pos % 2 else 2)
    runs = list_runs(engine, sweep.id)
    wanted = [RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED]
    with write_session(engine) as s:
        for r, status in zip([r for r in runs if r.status == RunStatus.RUNNING.value], wanted, strict=False):
            s.execute(update(Run).where(Run.id == r.id).values(status=status.value))
    order = [s.status.value for s in statuses.CATALOGUE]
    for path, bar in (("/", "#sweep-table .progress"), (f"/sweeps/{sweep.id}", "#sweep-progress")):
        p = page.open(path)
        drawn = p.evaluate(f"() => [...document.querySelector('{bar}').children].map((b) => b.classList[1])")
        present = {r.status for r in list_runs(engine, sweep.id)}
        assert drawn == [s for s in order if s in present], (path, drawn)
        text = p.locator(f"{bar} + .progress-text").inner_text()
        assert [part.split()[-1] for part in text.split(", ")] == drawn, text
    assert page.errors == []


INSIDE = """(id) => {
  const box = document.getElementById(id).getBoundingClientRect();
  const q = ['.gtitle', '.ytitle', '.y2title', '.legendtext'].map((c) => `#${CSS.escape(id)} ${c}`).join(', ');
  return [...document.querySelectorAll(q)].map((t) => {
    const r = t.getBoundingClientRect();
    return { text: t.textContent, inside: r.left >= box.left - 1 && r.right <= box.right + 1
             && r.top >= box.top - 1 && r.bottom <= box.bottom + 1 };
  });
}"""


@in_browser
def test_a_key_as_long_as_allowed_keeps_its_titles_inside_its_chart(page: Page,  # noqa: F811
                                                                    live_server: LiveServer) -> None:
    """Plotly wraps no title: one built from a KEY_CHARS-long key ran off its chart on both sides.
    Titles now keep the key's start and end around an ellipsis."""
    key = "val_" + "a_long_part_" * 30
    key = key[:metrics.KEY_CHARS - 3] + "end"
    with httpx.Client(base_url=live_server.url) as client:
        run = client.post("/api/external/runs", json={"sweep": "long keys", "config": {}, "seed": 0,
                                                      "epochs": 2}).json()
        for epoch in (1, 2):
            assert client.post(f"/api/runs/{run['id']}/epochs",
                               json={"epoch": epoch, "metrics": {key: epoch / 10}}).status_code == 200
    p = page.open(f"/sweeps/{run['sweep_id']}")
    assert key in p.evaluate(CHART_KEYS)
    titles = p.evaluate(INSIDE, f"curve-{key}")
    assert all(t["inside"] for t in titles), titles
    starts = (metrics.describe(key).title[:10], metrics.describe(key).axis[:10])  # the chart's title, its y axis'
    long = [t for t in titles if t["text"].startswith(starts)]  # not the legend's config names
    assert len(long) == 2 and all("…" in t["text"] and t["text"].endswith("end") for t in long), titles
    p = page.open(f"/runs/{run['id']}")  # its own chart (drawn without layout()): the title, the y axis
    titles = p.evaluate(INSIDE, "chart-run")
    assert len(titles) == 2 and all(t["inside"] and "…" in t["text"] for t in titles), titles
    assert page.errors == []
