"""The dashboard in Debian's Chromium (Playwright) against a live server: every page draws its charts
without a console error, an open sweep page grows as epochs commit, the form submits and reports
field errors, cancel works from the page, and the compare page's numbers are Welch's t-test.
Screenshots of each page land in test-output/screenshots/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import Engine, func, select

from app.config import Settings
from app.db import read_session
from app.models import Metric
from app.services import charts
from app.services.queue import Claim, record_epoch
from app.services.runs import list_runs
from tests.conftest import LiveServer, start_worker
from tests.e2e import conftest as fixtures
from tests.e2e.chromium import BROWSER_MARKS, CHROMIUM, SHOTS, Page  # noqa: F401  (CHROMIUM, SHOTS: others import them here)
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep, study_curve

POINTS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).reduce(
  (n, d) => n + (d.data || []).reduce((m, t) => m + ((t.x && t.x.length) || 0), 0), 0)"""

pytestmark = BROWSER_MARKS
# The fixtures are tests/e2e/conftest.py's; these names stay for the modules that import them from here.
browser, page = fixtures.browser, fixtures.page


def _config_ids(engine: Engine, sweep_id: int) -> list[int]:
    return [c["id"] for c in charts.config_infos(engine, sweep_id)]


def test_every_page_draws_its_charts_without_console_errors(page: Page, engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "name": "q6 hidden width"}, upto=lambda pos, seed: 2 if seed == 2 else 9)
    a = seed_sweep(engine, {**WIDTHS_SPEC, "name": "q1 sgd", "grid": {}, "replicates": 5})
    b = seed_sweep(engine, {**WIDTHS_SPEC, "name": "q4 adam", "grid": {}, "replicates": 5},
                   curve=lambda pos, seed, epoch: study_curve(4, seed, epoch))
    run = list_runs(engine, sweep.id)[0]
    compare = f"{_config_ids(engine, a.id)[0]},{_config_ids(engine, b.id)[0]}"
    expected = {"index": ("/", 0), "sweep": (f"/sweeps/{sweep.id}", 6), "run": (f"/runs/{run.id}", 3),
                "new": ("/sweeps/new", 0), "dataset": ("/datasets/mnist", 2),
                "compare": (f"/compare?configs={compare}", 6)}
    for name, (path, n_charts) in expected.items():
        page.open(path)
        assert page.charts() >= n_charts, f"{path} drew {page.charts()} charts"
        page.shot(name)
    assert page.errors == []
    text = page.page.locator("#verdict-list").inner_text()
    assert "q4 adam is" in text and "better than q1 sgd" in text and "5 vs 5 replicates" in text
    page.open(f"/runs/{run.id}")
    assert page.page.locator("#download-model").get_attribute("href") == f"/api/runs/{run.id}/artifacts/model.keras"
    assert "label 7" in page.page.locator("#chart-outputs").inner_text()
    running = next(r for r in list_runs(engine, sweep.id) if r.status == "running")
    p = page.open(f"/runs/{running.id}")  # no confusion matrix or outputs after training yet
    assert page.charts() >= 1 and "when the run succeeds" in p.locator("#chart-confusion").inner_text()
    p = page.open(f"/sweeps/{sweep.id}")
    p.check('input[name="band"][value="minmax"]')
    p.locator("#config-table .shown-box").first.uncheck()
    p.wait_for_function("() => document.getElementById('curve-loss').data.every(t => t.legendgroup !== "
                        f"'{_config_ids(engine, sweep.id)[0]}')", timeout=5_000)
    p.click("#config-table th:has-text('final val acc')")  # sorts by it
    assert page.errors == []


def test_a_committed_epoch_appears_on_an_open_sweep_page(page: Page, engine: Engine) -> None:
    sweep = seed_sweep(engine, {**WIDTHS_SPEC, "grid": {}, "replicates": 2}, upto=lambda pos, seed: 1)
    p = page.open(f"/sweeps/{sweep.id}")
    before = p.evaluate(POINTS)
    run = list_runs(engine, sweep.id)[0]
    claim = Claim(run.id, sweep.id, run.config_id, run.seed, 1, 1, run.epochs, "seeded", run.config)
    t0 = time.monotonic()
    record_epoch(engine, claim, 2, study_curve(0, run.seed, 2), None, 60.0)
    with read_session(engine) as s:
        top = s.scalar(select(func.max(Metric.seq)).where(Metric.run_id == run.id))  # the stream's cursor
    p.wait_for_function(f"() => Number(document.body.dataset.drawnCursor) >= {top}", timeout=10_000)
    seconds = time.monotonic() - t0
    assert p.evaluate(POINTS) > before
    assert seconds < 2.5, f"the epoch took {seconds:.2f} s to appear (target 1 s)"
    page.shot("sweep-live")
    assert page.errors == []


def test_a_worker_s_epochs_and_statuses_stream_in(page: Page, engine: Engine, settings: Settings,
                                                   live_server: LiveServer, tmp_path: Path) -> None:
    spec = {"name": "live", "dataset": "mnist", "epochs": 4, "replicates": 2}
    sweep_id = httpx.post(f"{live_server.url}/api/sweeps", json=spec).json()["id"]
    p = page.open(f"/sweeps/{sweep_id}")
    before = p.evaluate(POINTS)
    worker = start_worker(settings, tmp_path / "worker.log", SWEEPLAB_FAKE_EPOCH_SECONDS="0.4")
    try:
        p.wait_for_function(f"() => ({POINTS})() > {before}", timeout=20_000)
        p.wait_for_function("() => document.getElementById('sweep-status').textContent.startsWith('2/2 succeeded')",
                            timeout=30_000)
        p.wait_for_function("() => document.querySelectorAll('#run-table .status.succeeded').length === 2",
                            timeout=10_000)
    finally:
        worker.terminate()
        worker.wait(10)
    assert page.errors == []


def test_the_form_reports_field_errors_and_submits(page: Page, live_server: LiveServer) -> None:
    p = page.open("/sweeps/new")
    p.fill("#f-name", "from the form")
    p.fill("#f-epochs", "0")
    error = p.locator('[data-loc="epochs"] .field-error')
    error.wait_for(state="visible", timeout=5_000)
    assert "greater than or equal to 1" in error.inner_text()
    p.click("#submit-sweep")
    p.wait_for_timeout(300)
    assert p.url.endswith("/sweeps/new") and error.is_visible()
    page.shot("new-sweep-error")
    p.fill("#f-epochs", "3")
    p.click("#add-axis")
    p.select_option(".grid-row .grid-path", "model.hidden")
    p.fill(".grid-row .grid-values", "[8], [16]")
    p.fill("#f-replicates", "2")
    p.wait_for_function("() => document.getElementById('run-count').textContent.includes('= 4 runs')", timeout=5_000)
    assert not error.is_visible()
    yaml_text = p.input_value("#spec-yaml")
    assert "model.hidden: [[8], [16]]" in yaml_text and "epochs: 3" in yaml_text
    p.fill("#spec-yaml", yaml_text.replace("epochs: 3", "epochs: 5"))  # the YAML fills the form back
    p.wait_for_function("() => document.getElementById('f-epochs').value === '5'", timeout=5_000)
    p.click("#submit-sweep")
    p.wait_for_url(re.compile(r".*/sweeps/\d+$"), wait_until="commit", timeout=10_000)
    sweep_id = int(p.url.rsplit("/", 1)[1])
    created = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}").json()
    assert created["name"] == "from the form" and created["runs"] == 4 and created["spec"]["epochs"] == 5
    assert created["spec"]["grid"] == {"model.hidden": [[8], [16]]}
    assert page.errors == [] or all("422" in e for e in page.errors)


def test_cancel_from_the_sweep_page(page: Page, live_server: LiveServer) -> None:
    spec = {"name": "to cancel", "dataset": "mnist", "epochs": 3, "replicates": 3}
    sweep_id = httpx.post(f"{live_server.url}/api/sweeps", json=spec).json()["id"]
    p = page.open(f"/sweeps/{sweep_id}")
    p.on("dialog", lambda dialog: dialog.accept())
    p.click("#cancel-sweep")
    p.wait_for_function("() => document.getElementById('sweep-status').textContent.includes('3 cancelled')",
                        timeout=5_000)
    counts = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}").json()["status_counts"]
    assert counts["cancelled"] == 3 and counts["queued"] == 0
    assert p.locator("#cancel-sweep").is_disabled() and p.locator("#retry-sweep").is_visible()
    page.shot("sweep-cancelled")
    assert page.errors == []


def test_compare_page_numbers_are_welch_t_test(page: Page, engine: Engine) -> None:
    a = seed_sweep(engine, {**WIDTHS_SPEC, "name": "q3 lower lr", "grid": {}, "replicates": 6})
    b = seed_sweep(engine, {**WIDTHS_SPEC, "name": "q5 softmax", "grid": {}, "replicates": 4},
                   curve=lambda pos, seed, epoch: study_curve(1, seed + 3, epoch))
    ids = [_config_ids(engine, s.id)[0] for s in (a, b)]
    p = page.open(f"/compare?configs={ids[0]},{ids[1]}")
    verdict = p.locator(".verdict").first
    shown = {k: float(verdict.get_attribute(f"data-{k}") or "nan") for k in ("diff", "ci-low", "ci-high", "p", "t")}
    xa = [study_curve(0, seed, 4)["val_accuracy"] for seed in range(6)]
    xb = [study_curve(1, seed + 3, 4)["val_accuracy"] for seed in range(4)]
    result = scipy_stats.ttest_ind(xb, xa, equal_var=False)
    ci = result.confidence_interval(0.95)
    assert shown["p"] == pytest.approx(result.pvalue, rel=1e-9)
    assert shown["t"] == pytest.approx(result.statistic, rel=1e-9)
    assert (shown["ci-low"], shown["ci-high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert shown["diff"] == pytest.approx(sum(xb) / 4 - sum(xa) / 6, rel=1e-9)
    diff, half = 100 * abs(shown["diff"]), 100 * (ci.high - ci.low) / 2
    p_words = "p < 0.001" if result.pvalue < 0.001 else (f"p = {result.pvalue:.3f}" if result.pvalue < 0.01
                                                          else f"p = {result.pvalue:.2f}")
    assert f"{diff:.1f} ± {half:.1f} points better" in verdict.inner_text()
    assert p_words in verdict.inner_text() and "6 vs 4 replicates" in verdict.inner_text()
    page.shot("compare")
    assert page.errors == []



def test_the_list_runs_the_mnist_study_and_cancels_a_sweep(page: Page, live_server: LiveServer) -> None:
    p = page.open("/")
    p.on("dialog", lambda dialog: dialog.accept())
    p.click("#run-study")
    p.wait_for_url(re.compile(r".*\?study=mnist-study$"), wait_until="commit", timeout=15_000)
    p.wait_for_selector("body[data-ready=true]")
    rows = p.locator("#sweep-table tbody tr")
    assert rows.count() == 10 and "181 runs" in p.locator(".study-card").inner_text()
    page.shot("index-study")
    first = rows.first
    sweep_id = first.get_attribute("data-sweep-id")
    first.locator(".cancel-sweep").click()
    first.locator(".cancel-sweep").wait_for(state="hidden", timeout=5_000)
    counts = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}").json()["status_counts"]
    assert counts["queued"] == 0 and counts["cancelled"] > 0
    assert "cancelled" in first.locator(".progress-text").inner_text()
    assert page.errors == []


TICKS = "(sel) => document.querySelector(sel)._fullLayout.xaxis._vals.map((v) => v.x)"


def test_short_runs_tick_the_epoch_axis_at_whole_epochs(page: Page, engine: Engine) -> None:
    """Plotly's automatic ticks on a 0..3 epoch axis fall at 0, 0.5, 1, ...: the curve charts of the
    sweep page and the run page tick at whole epochs instead; a long run keeps Plotly's own ticks."""
    short = seed_sweep(engine, {**WIDTHS_SPEC, "name": "short", "grid": {}, "replicates": 2, "epochs": 3})
    long = seed_sweep(engine, {**WIDTHS_SPEC, "name": "long", "grid": {}, "replicates": 2, "epochs": 40})
    run = list_runs(engine, short.id)[0]
    for path, chart in ((f"/sweeps/{short.id}", "#curve-loss"), (f"/runs/{run.id}", "#chart-run")):
        p = page.open(path)
        p.wait_for_function("(sel) => document.querySelector(sel)._fullLayout", arg=chart, timeout=10_000)
        ticks = p.evaluate(TICKS, chart)
        assert ticks == [0, 1, 2, 3], f"{path}: {ticks}"
    p = page.open(f"/sweeps/{long.id}")
    p.wait_for_function("(sel) => document.querySelector(sel)._fullLayout", arg="#curve-loss", timeout=10_000)
    ticks = p.evaluate(TICKS, "#curve-loss")
    assert 3 <= len(ticks) <= 10 and all(float(t).is_integer() for t in ticks), ticks
    assert page.errors == []
