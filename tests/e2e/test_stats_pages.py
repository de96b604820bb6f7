"""The statistics on the sweep and compare pages, in Debian's Chromium against a live server: the
config table's verdicts and differences from the best, the power sentence answering the difference
typed in, the importance and parallel-coordinates charts drawn, the compare page's power sentence.
Every number is computed again here (scipy, statsmodels) from the finals the sweep was seeded with."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import Engine
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from app.services import charts
from tests.conftest import LiveServer
from tests.e2e.test_chart_text import CHART_TEXT, _assert_literal
from tests.e2e.test_pages import CHROMIUM, SHOTS, Page, browser, page  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

EPOCHS, SEEDS = 2, 5
# An external sweep (logged through the external-run API, as a notebook would) whose config keys and
# values hold markup: the charts must show them as typed (Plotly reads some strings as markup).
WIDTH, ADAM = "<b>width</b>", "<i>adam</i>"
CONFIGS = [{"optimizer": o, WIDTH: w} for o in ("sgd", ADAM) for w in ([8], [32, 16])]
BASE = [0.900, 0.905, 0.950, 0.952]  # mean final val_accuracy by config position
ONE_DONE = 1  # this config has one succeeded replicate only (the others still run): too few to compare


def final(position: int, seed: int) -> float:
    return BASE[position] + ((seed * 37 + position * 11) % 7 - 3) / 1000


def done(position: int, seed: int) -> bool:
    return position != ONE_DONE or seed == 0


def _log_sweep(base: str) -> int:
    """The sweep's runs through the external-run API; returns the sweep's id."""
    with httpx.Client(base_url=base) as client:
        for position, config in enumerate(CONFIGS):
            for seed in range(SEEDS):
                run = client.post("/api/external/runs", json={"sweep": "stats grid", "config": config, "seed": seed,
                                                               "epochs": EPOCHS}).json()
                last = EPOCHS if done(position, seed) else 1
                for epoch in range(1, last + 1):
                    metrics = {"val_accuracy": final(position, seed) * epoch / EPOCHS, "loss": 1 / epoch + seed / 100}
                    assert client.post(f"/api/runs/{run['id']}/epochs",
                                       json={"epoch": epoch, "metrics": metrics}).status_code == 200
                if done(position, seed):
                    assert client.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).status_code == 200
    return int(run["sweep_id"])


def _expected_verdicts(positions: dict[int, int], done: Callable[[int, int], bool] = done
                       ) -> dict[int, tuple[str, float | None]]:
    """Per config id: (verdict, difference from the best), by scipy's Welch test and Holm's correction."""
    finals = {cid: [final(pos, s) for s in range(SEEDS) if done(pos, s)] for cid, pos in positions.items()}
    eligible = {cid: xs for cid, xs in finals.items() if len(xs) >= 2}
    best = max(eligible, key=lambda cid: float(np.mean(eligible[cid])))
    others = [cid for cid in eligible if cid != best]
    ps = [scipy_stats.ttest_ind(eligible[cid], eligible[best], equal_var=False).pvalue for cid in others]
    holm = multipletests(ps, method="holm")[1]
    out: dict[int, tuple[str, float | None]] = {best: ("best", 0.0)}
    for cid, p in zip(others, holm, strict=True):
        diff = float(np.mean(eligible[cid]) - np.mean(eligible[best]))
        out[cid] = ("indistinguishable" if p >= 0.05 else "worse" if diff < 0 else "better", diff)
    out |= {cid: ("too_few", None) for cid in finals if cid not in eligible}
    return out


def _power(positions: dict[int, int]) -> tuple[float, int]:
    """The pooled seed noise and the median replicates of the configs with at least two finals."""
    groups = [xs for pos in positions.values() if len(xs := [final(pos, s) for s in range(SEEDS) if done(pos, s)]) >= 2]
    sd = math.sqrt(sum((len(xs) - 1) * np.var(xs, ddof=1) for xs in groups) / sum(len(xs) - 1 for xs in groups))
    return sd, int(statistics.median(len(xs) for xs in groups))


def _needed(difference: float, sd: float) -> int:
    n = 2
    while TTestIndPower().power(effect_size=difference / sd, nobs1=n, alpha=0.05) < 0.8:
        n += 1
    return n


def test_the_sweep_page_shows_verdicts_power_importance_and_parcoords(page: Page, engine: Engine,  # noqa: F811
                                                                       live_server: LiveServer) -> None:
    sweep_id = _log_sweep(live_server.url)
    configs = charts.config_infos(engine, sweep_id)
    assert [c["params"] for c in configs] == CONFIGS
    positions = {c["id"]: c["position"] for c in configs}
    expected = _expected_verdicts(positions)

    p = page.open(f"/sweeps/{sweep_id}")
    p.wait_for_selector("body[data-stats-ready=true]", timeout=20_000)
    cells = p.evaluate("""() => [...document.querySelectorAll('#config-table tbody tr')].map((tr) => ({
        id: Number(tr.dataset.configId), verdict: tr.querySelector('.verdict-cell').dataset.verdict,
        title: tr.querySelector('.verdict-tag').title, text: tr.querySelector('.verdict-cell').textContent,
        diff: tr.querySelector('[data-difference]')?.dataset.difference ?? null}))""")
    assert {c["id"]: c["verdict"] for c in cells} == {cid: v for cid, (v, _) in expected.items()}
    for c in cells:
        verdict, diff = expected[c["id"]]
        assert c["text"] == verdict.replace("_", " ") and c["title"]  # the sentence as its tooltip
        if verdict not in ("best", "too_few"):
            assert float(c["diff"]) == pytest.approx(diff, abs=1e-12)
            assert "points" in c["title"] and f"{SEEDS} vs {SEEDS} seeds" in c["title"]
    assert {v for v, _ in expected.values()} >= {"best", "worse", "too_few"}  # the data shows each kind

    sd, n = _power(positions)
    sentence = p.locator("#power-sentence")
    detectable = float(sentence.get_attribute("data-detectable") or "nan")
    assert detectable == pytest.approx(TTestIndPower().solve_power(nobs1=n, alpha=0.05, power=0.8) * sd, rel=1e-6)
    assert sentence.inner_text().startswith(f"With {n} seeds this sweep can tell apart differences of")
    first = sentence.inner_text()
    p.fill("#detect-input", "0.3")  # points
    p.wait_for_function("() => document.getElementById('power-sentence').dataset.detect === '0.003'", timeout=10_000)
    assert sentence.inner_text() != first
    needed = _needed(0.003, sd)
    assert sentence.get_attribute("data-replicates-needed") == str(needed)
    assert re.search(rf"; 0\.30? points would need {needed} seeds per config \(two-sided t-test", sentence.inner_text())

    bars = p.evaluate("() => document.getElementById('importance-chart').data[0]")
    assert bars["type"] == "bar" and len(bars["y"]) == 4 and bars["y"][-1] == "seeds (residual)"  # 2 + 1 + seeds
    assert p.locator("#importance-text").inner_text().startswith(("optimizer", WIDTH))
    p.locator("#parcoords-chart").scroll_into_view_if_needed()  # WebGL: drawn once near the view
    p.wait_for_selector("body[data-parcoords-ready=true]", timeout=20_000)
    lines = p.evaluate("() => document.getElementById('parcoords-chart').data[0]")
    assert lines["type"] == "parcoords" and len(lines["dimensions"]) == 3
    for chart in ("importance-chart", "parcoords-chart"):
        _assert_literal(p.evaluate(CHART_TEXT.replace(".js-plotly-plot", f"#{chart}")), WIDTH)
    _assert_literal(p.evaluate(CHART_TEXT.replace(".js-plotly-plot", "#parcoords-chart")), ADAM)
    means = [float(np.mean([final(positions[cid], s) for s in range(SEEDS) if done(positions[cid], s)]))
             for cid in sorted(positions, key=positions.get)]
    assert lines["line"]["color"] == pytest.approx(means, abs=1e-12)
    assert p.locator("#parcoords-chart .parcoords").count() == 1  # Plotly drew it
    # A run of the config with too few replicates succeeds: its verdict follows without a reload.
    late = next(c["id"] for c in configs if c["position"] == ONE_DONE)
    run = next(r for r in httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/runs").json()
               if r["config_id"] == late and r["status"] == "running")
    httpx.post(f"{live_server.url}/api/runs/{run['id']}/epochs",
               json={"epoch": EPOCHS, "metrics": {"val_accuracy": final(ONE_DONE, run["seed"])}}).raise_for_status()
    httpx.post(f"{live_server.url}/api/runs/{run['id']}/finish", json={"status": "succeeded"}).raise_for_status()
    now = _expected_verdicts(positions, lambda pos, seed: done(pos, seed) or (pos, seed) == (ONE_DONE, run["seed"]))
    assert now[late][0] != "too_few"
    p.wait_for_function(f"""() => document.querySelector('#config-table tr[data-config-id="{late}"] .verdict-cell')
                             .dataset.verdict === '{now[late][0]}'""", timeout=15_000)
    p.locator("#method-details summary").click()
    assert "Holm" in p.locator("#stats-method").inner_text()
    p.screenshot(path=str(SHOTS / "sweep-stats.png"), full_page=True)
    p.screenshot(path="/tmp/sweep-stats.png", full_page=True)

    ids = [cid for cid in sorted(positions, key=positions.get) if positions[cid] != ONE_DONE]
    p = page.open(f"/compare?configs={','.join(map(str, ids))}")
    text = p.locator("#power-sentence").inner_text()
    assert text.startswith(f"With {n} seeds these configs can tell apart differences of")
    assert "seeds per config" in text  # asked with a starting difference
    assert p.locator("#best-verdicts li").count() == len(ids) - 1
    p.screenshot(path="/tmp/compare-stats.png", full_page=True)
    assert page.errors == []

