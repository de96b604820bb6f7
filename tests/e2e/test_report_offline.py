"""The report as a student hands it in: downloaded from a live server, saved to disk, opened from
file:// in headless Chromium with every network request refused (and recorded): every chart is
drawn, with data, interactive, and nothing is fetched or logged as an error; hostile labels run
no script; the PDF is a PDF of a plausible size. A screenshot of the report goes to test-output/screenshots."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update

from app.db import write_session
from app.models import Run
from tests.conftest import LiveServer
from tests.e2e.chromium import BROWSER_MARKS, CHROMIUM, SHOTS
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

HOSTILE = "</script><img src=x onerror=alert(1)>"
GRID = {**WIDTHS_SPEC, "name": "widths and rates", "grid": {"model.hidden": [[8], [32], [128]],
                                                            "optimizer.learning_rate": [0.01, 0.1]}}
PROVENANCE = {"sweeplab": "0.1.0", "python": "3.11.2", "tensorflow": "2.16.1", "keras": "3.3.3", "numpy": "1.26.4",
              "dataset": "mnist", "dataset_sha256": "0f" * 32, "host": "lab-pc", "cpu": "Test CPU", "gpu": "none",
              "trainer": "keras_packed", "packed": True, "pack_size": 6}
# Per chart: its number of traces and of points (x values, or a parcoords' lines); a chart with none fails.
DRAWN = """() => Array.from(document.querySelectorAll('.chart')).map((d) => ({
  id: d.id, plotted: d.classList.contains('js-plotly-plot'), traces: (d.data || []).length,
  points: (d.data || []).reduce((n, t) => n + ((t.x && t.x.length) || (t.dimensions && t.dimensions[0].values.length)
    || 0), 0), svg: d.querySelectorAll('svg.main-svg').length }))"""

pytestmark = BROWSER_MARKS


class Offline:
    """A page that may load file: URLs only; every other request is refused and recorded, as are
    console errors, uncaught exceptions and dialogs (an injected alert would open one)."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self, path: Path) -> Any:
        self.page.goto(path.as_uri(), wait_until="load")
        self.page.wait_for_selector("body[data-ready]", timeout=30_000, state="attached")
        assert self.page.evaluate("document.body.dataset.ready") == "true", self.errors
        return self.page


@pytest.fixture
def offline(browser: Any) -> Iterator[Offline]:
    o = Offline(browser)
    yield o
    o.context.close()


def add_provenance(engine: Engine, sweep_id: int) -> None:
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.sweep_id == sweep_id).values(provenance=PROVENANCE))


def download(server: LiveServer, path: str, folder: Path) -> Path:
    answer = httpx.get(server.url + path, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    name = re.fullmatch(r'attachment; filename="([a-z0-9-]+\.html)"', answer.headers["content-disposition"])
    assert name is not None, answer.headers["content-disposition"]
    saved = folder / name.group(1)
    saved.write_bytes(answer.content)
    return saved


def test_the_report_opened_from_disk_draws_every_chart_offline_and_prints(live_server: LiveServer, engine: Engine,
                                                                 offline: Offline, tmp_path: Path) -> None:
    sweep = seed_sweep(engine, GRID)
    add_provenance(engine, sweep.id)
    saved = download(live_server, f"/api/sweeps/{sweep.id}/report.html", tmp_path)
    page = offline.open(saved)
    charts = page.evaluate(DRAWN)
    figures = json.loads(page.evaluate("document.getElementById('report-figures').textContent"))
    # 4 curves, the final metric against each of the 2 settings, importance, parallel coordinates
    assert len(charts) == len(figures) == 8, charts
    assert page.locator(".js-plotly-plot").count() == len(charts)
    for c in charts:
        assert c["plotted"] and c["traces"] > 0 and c["points"] > 0 and c["svg"] > 0, c
    assert offline.requests == [] and offline.errors == [] and offline.dialogs == []
    # Interactive: hovering a curve shows its values.
    page.evaluate("Plotly.Fx.hover(document.getElementById('fig-4'), [{curveNumber: 1, pointNumber: 2}])")
    assert page.locator("#fig-4 .hovertext").count() >= 1
    text = page.locator("main").inner_text()
    assert "TensorFlow 2.16.1" in text and "0f" * 32 in text and "Holm" in text and "packed 6 runs per model" in text
    # The screenshot a student would see (the whole page: charts keep their size when the window grows).
    page.set_viewport_size({"width": 1100, "height": page.evaluate("document.documentElement.scrollHeight")})
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / "report.png"))
    assert offline.requests == [] and offline.errors == []

    # The same report as PDF, printed by the server's Chromium.
    answer = httpx.get(f"{live_server.url}/api/sweeps/{sweep.id}/report.pdf", timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"] == "application/pdf"
    name = f"sweep-{sweep.id}-widths-and-rates-report.pdf"
    assert answer.headers["content-disposition"] == f'attachment; filename="{name}"'
    pdf = answer.content
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert 30_000 < len(pdf) < 5_000_000, len(pdf)
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert 3 <= pages <= 20, pages  # methods, tables and eight charts on A4
    t0 = time.monotonic()
    again = httpx.get(f"{live_server.url}/api/sweeps/{sweep.id}/report.pdf", timeout=120)
    assert again.content == pdf and time.monotonic() - t0 < 5  # unchanged runs: the same PDF, no browser


def test_hostile_labels_open_no_dialog_and_read_as_typed(live_server: LiveServer, engine: Engine,
                                                         offline: Offline, tmp_path: Path) -> None:
    for width, values in ((8, (0.8, 0.82)), (16, (0.9, 0.91))):
        for seed, value in enumerate(values):
            run = httpx.post(f"{live_server.url}/api/external/runs", timeout=10, json={
                "sweep": HOSTILE, "study": HOSTILE, "config": {"note": HOSTILE, "width": width}, "seed": seed,
                "epochs": 1}).json()
            body = {"epoch": 1, "metrics": {"val_accuracy": value, "accuracy": value, "loss": 1 - value}}
            assert httpx.post(f"{live_server.url}/api/runs/{run['id']}/epochs", json=body, timeout=10).is_success
            assert httpx.post(f"{live_server.url}/api/runs/{run['id']}/finish", json={"status": "succeeded"},
                              timeout=10).is_success
    saved = download(live_server, f"/api/studies/{HOSTILE}/report.html", tmp_path)
    page = offline.open(saved)
    assert offline.dialogs == [] and offline.errors == [] and offline.requests == []
    assert page.locator("img").count() == 0
    assert page.locator("h1").inner_text() == HOSTILE
    legends = page.locator(".legendtext").all_text_contents()
    assert any(HOSTILE in t for t in legends), legends  # Plotly shows the entity-escaped text as typed
    assert page.locator(".js-plotly-plot").count() == page.locator(".chart").count() > 0




def test_a_render_past_its_timeout_is_a_504_and_frees_the_next(tmp_path: Path) -> None:
    from app.errors import SweeplabError
    from app.services import report_pdf

    def render() -> bytes:
        return report_pdf.html_to_pdf(lambda: "<!doctype html><body data-ready=true>x</body>", CHROMIUM, timeout=0.001)

    # In a thread of its own, as the server runs it (this thread may hold the module's Playwright).
    with ThreadPoolExecutor(1) as pool, pytest.raises(SweeplabError) as caught:
        pool.submit(render).result(timeout=60)
    assert isinstance(caught.value, report_pdf.ReportTimeout) and caught.value.status_code == 504
    assert report_pdf._rendering.acquire(blocking=False)  # the failed render let go of the lock
    report_pdf._rendering.release()
