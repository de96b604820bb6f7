"""The study page in Debian's Chromium against a live server, one page load: every sweep of the
study with its progress and link, each declared question's sentence (the API's, and in the words
the numbers say: scipy's Welch test here) and its chart (a mean ± CI per config, a dot per
succeeded replicate), the report links, no console error. A screenshot lands in
test-output/screenshots/study.png."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import Engine

from app.models import RunStatus
from app.services.queue import Claim, finish_run, record_epoch
from app.services.runs import list_runs
from tests.conftest import LiveServer
from tests.e2e.test_pages import CHROMIUM, Page, browser, page  # noqa: F401  (fixtures)
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep, study_curve

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

STUDY = "mnist <like> study"  # markup in the name shows as typed
BASE: dict[str, Any] = {**WIDTHS_SPEC, "study": STUDY, "epochs": 2}
QUESTIONS = [
    {"ask": "Is Adam better than SGD beyond seed noise?", "compare": ["q1 sgd", "q4 adam"]},
    {"ask": "Which width stops helping?", "compare": ["q6 widths"]},
    {"ask": "Does the later sweep help?", "compare": ["q1 sgd", "q9 later"]},
]
DRAWN = """(i) => { const d = document.getElementById('question-chart-' + i);
  return d && d.data ? d.data.map((t) => [t.name, t.x.length]) : null; }"""


def finals(engine: Engine, sweep_id: int, position: int) -> list[float]:
    """The final val_accuracy of each run of a one-config sweep seeded with study_curve(POSITION, ...)."""
    return [study_curve(position, r.seed, r.epochs)["val_accuracy"] or 0.0 for r in list_runs(engine, sweep_id)]


def test_the_study_page_lists_its_sweeps_and_answers_its_questions(page: Page, engine: Engine,  # noqa: F811
                                                                   live_server: LiveServer) -> None:
    q1 = seed_sweep(engine, {**BASE, "name": "q1 sgd", "description": "plain SGD", "grid": {}, "replicates": 5})
    q4 = seed_sweep(engine, {**BASE, "name": "q4 adam", "grid": {}, "replicates": 5},
                    curve=lambda pos, seed, epoch: study_curve(4, seed, epoch))
    # One replicate of the widths still trains: the page is live.
    q6 = seed_sweep(engine, {**BASE, "name": "q6 widths", "questions": QUESTIONS},
                    upto=lambda pos, seed: 1 if (pos, seed) == (2, 2) else 9)
    answer = httpx.get(f"{live_server.url}/api/studies/{STUDY}", timeout=60).json()

    p = page.open(f"/studies/{STUDY}")
    assert p.locator("h1").inner_text().startswith(STUDY)
    rows = p.locator("#study-sweeps tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).locator("a.sweep-name").inner_text() for i in range(3)] == ["q1 sgd", "q4 adam", "q6 widths"]
    assert rows.nth(0).locator("a.sweep-name").get_attribute("href") == f"/sweeps/{q1.id}"
    assert "plain SGD" in rows.nth(0).inner_text()
    assert "8/9 succeeded, 1 running" in rows.nth(2).locator(".progress-text").inner_text()
    assert rows.nth(2).locator(".progress .bar").count() == 2
    assert p.locator("#study-status").inner_text() == "18/19 succeeded, 1 running"
    assert p.locator("#live").inner_text() == "live"

    boxes = p.locator("#question-list .question")
    assert boxes.count() == 3
    texts = [boxes.nth(i).locator(".answer").inner_text() for i in range(3)]
    assert texts == [q["text"] for q in answer["questions"]]
    assert [boxes.nth(i).locator(".ask").inner_text() for i in range(3)] == [q["ask"] for q in QUESTIONS]
    # q4 adam against q1 sgd, in the numbers scipy gives for these finals.
    adam, sgd = finals(engine, q4.id, 4), finals(engine, q1.id, 0)
    welch = scipy_stats.ttest_ind(sgd, adam, equal_var=False)
    points = 100 * (sum(adam) / len(adam) - sum(sgd) / len(sgd))
    assert texts[0].startswith(f"q4 adam is better than q1 sgd by {points:.1f} ± ")
    assert texts[0].endswith(("p < 0.001; 5 vs 5 seeds.", f"p = {welch.pvalue:.3f}; 5 vs 5 seeds."))
    assert texts[1].startswith("Best: hidden=[")
    assert texts[2] == "Sweep 'q9 later' not found in this study."
    assert boxes.nth(2).locator(".answer.unclear").count() == 1 and boxes.nth(0).locator(".answer.unclear").count() == 0
    assert boxes.nth(0).locator("a").first.get_attribute("href") == f"/sweeps/{q1.id}"

    # Charts: a mean per config (grouped by verdict), a dot per succeeded replicate.
    first = dict(p.evaluate(DRAWN, 0))
    assert first["best (highest mean)"] == 1 and first["worse than the best"] == 1 and first["replicates"] == 10
    second = dict(p.evaluate(DRAWN, 1))
    assert sum(n for name, n in second.items() if name != "replicates") == 3 and second["replicates"] == 8
    assert dict(p.evaluate(DRAWN, 2)) == {"not compared": 1, "replicates": 5}  # the sweep it found, unjudged
    ticks = p.evaluate("() => document.getElementById('question-chart-0').layout.xaxis.ticktext")
    assert ticks == ["q1 sgd", "q4 adam"]

    quoted = httpx.URL(f"/api/studies/{STUDY}/report.html").raw_path.decode()
    assert p.locator("#report-html").get_attribute("href") in (quoted, f"/api/studies/{STUDY}/report.html")
    assert p.locator("#report-pdf").get_attribute("href").endswith("/report.pdf")
    page.shot("study")
    p.screenshot(path="/tmp/study-page.png", full_page=True)

    # Live: the last replicate ends; the page's progress poll sees it and the answers follow.
    run = next(r for r in list_runs(engine, q6.id) if r.status == RunStatus.RUNNING.value)
    claim = Claim(run.id, q6.id, run.config_id, run.seed, 1, 1, run.epochs, "seeded", run.config)
    record_epoch(engine, claim, 2, study_curve(2, run.seed, 2), None, 60.0)
    assert finish_run(engine, claim, RunStatus.SUCCEEDED)
    p.wait_for_function("() => document.getElementById('study-status').textContent === '19/19 succeeded'",
                        timeout=15_000)
    p.wait_for_function(f"() => ({DRAWN})(1).some(([name, n]) => name === 'replicates' && n === 9)", timeout=5_000)
    assert ", 3 seeds)" in boxes.nth(1).locator(".answer").inner_text()
    assert p.locator("#live").inner_text() == "every run has ended"
    assert page.errors == []
