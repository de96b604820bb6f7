"""Hostile text from every door a user has, shown in Debian's Chromium: a sweep spec's name, study,
description and question (POST /api/sweeps), external runs' sweep, study, config keys and values
(the grid axes and config labels), metric keys (POST /api/external/runs, /api/runs/{id}/epochs),
and an MLflow client's experiment name, run name, metric keys, params and tags. Every page that
shows them, and the study's and a sweep's report opened from disk, run none of it: window.__xss
stays undefined, no dialog opens, no <img>, link or script is made of it, Plotly draws it as
typed (hover labels included), and `{{7*7}}` is not a template."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.conftest import LiveServer
from tests.e2e import conftest as fixtures
from tests.e2e.chromium import BROWSER_MARKS, Page

pytestmark = BROWSER_MARKS
browser, page = fixtures.browser, fixtures.page

IMG = '<img src=x onerror="window.__xss=1">'
LINK = '<a href="javascript:window.__xss=1">x</a>'
SCRIPT = "</script><script>window.__xss=1</script>"
EVIL = f"{IMG}{LINK}{SCRIPT} {{{{7*7}}}} %{{y}} &amp;"
STUDY = f"study {IMG}{{{{7*7}}}}"
KEY = f"k{IMG}"  # a config key: a grid axis of the external sweep
METRIC = f"m{IMG}"[:100]  # a metric key the runs report
MLFLOW = "/api/2.0/mlflow"

# Everything a page could have made of the text: what ran, and what was built.
INJECTED = """() => ({
  xss: window.__xss,
  imgs: document.querySelectorAll('img[src="x"]').length,
  scripts: [...document.querySelectorAll('script')].filter((s) => !s.src && !s.type).map((s) => s.textContent)
    .filter((t) => t.includes('__xss')).length,
  jsLinks: document.querySelectorAll('a[href^="javascript:" i]').length,
  svgLinks: [...document.querySelectorAll('.js-plotly-plot svg a')].length,
  text: document.body.innerText,
})"""

# Hovers the first point of every trace of every chart and collects what the hover labels show.
HOVER_ALL = """() => {
  const out = { links: 0, texts: [] };
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    (gd.data || []).forEach((t, i) => {
      if (t.type === 'parcoords' || !t.x || !t.x.length || t.hoverinfo === 'skip') return;
      Plotly.Fx.hover(gd, [{ curveNumber: i, pointNumber: 0 }]);
      const layer = gd.querySelector('.hoverlayer');
      if (!layer) return;
      out.links += layer.querySelectorAll('a').length;
      out.texts.push([...layer.querySelectorAll('text')].map((n) => n.textContent).join(' | '));
    });
    Plotly.Fx.unhover(gd);
  }
  return out;
}"""

SVG_TEXT = """() => [...document.querySelectorAll('.js-plotly-plot svg text')].map((t) => t.textContent)"""


def _post(server: LiveServer, path: str, body: dict[str, Any], status: int = 200) -> Any:
    answer = httpx.post(server.url + path, json=body, timeout=30)
    assert answer.status_code == status, (path, answer.text[:500])
    return answer.json()


def _external(server: LiveServer) -> tuple[int, int]:
    """Two configs of an external sweep named EVIL in STUDY, two seeds each, with hostile config
    keys and values and a hostile metric key; answers (the sweep's id, a run's id)."""
    run_id = 0
    for i, value in enumerate((f"<b>bold</b>{IMG}", f"<i>it</i>{LINK}")):
        for seed in (0, 1):
            run = _post(server, "/api/external/runs", {"sweep": EVIL, "study": STUDY, "seed": seed, "epochs": 2,
                                                       "config": {KEY: value, "width": 8 * (i + 1)}}, 201)
            run_id = run["id"]
            for epoch in (1, 2):
                acc = 0.6 + 0.1 * i + 0.01 * seed + 0.05 * epoch
                _post(server, f"/api/runs/{run_id}/epochs", {"epoch": epoch, "metrics": {
                    "val_accuracy": acc, "accuracy": acc, "loss": 1 - acc, "val_loss": 1.1 - acc, METRIC: acc}})
            _post(server, f"/api/runs/{run_id}/finish", {"status": "succeeded"})
    return run["sweep_id"], run_id


def _mlflow(server: LiveServer) -> int:
    """An MLflow experiment named after EVIL with two finished runs: run names, metric keys,
    params and tags hostile. Answers the experiment's (sweep's) id."""
    eid = _post(server, f"{MLFLOW}/experiments/create", {"name": f"mlflow {EVIL}"})["experiment_id"]
    for i in range(2):
        run = _post(server, f"{MLFLOW}/runs/create", {"experiment_id": eid, "start_time": 1,
                                                      "run_name": f"run {IMG}", "tags": [{"key": f"t{IMG}",
                                                                                          "value": EVIL}]})
        run_id = run["run"]["info"]["run_id"]
        metrics = [{"key": key, "value": 0.5 + 0.1 * i + 0.01 * step, "timestamp": 1000 + step, "step": step}
                   for key in ("val_accuracy", f"ml{IMG}") for step in (1, 2)]
        _post(server, f"{MLFLOW}/runs/log-batch", {"run_id": run_id, "metrics": metrics,
                                                   "params": [{"key": f"p{IMG}", "value": f"{LINK}{i}"}],
                                                   "tags": [{"key": "note", "value": SCRIPT}]})
        _post(server, f"{MLFLOW}/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": 5})
    return int(eid)


def _spec_sweep(server: LiveServer) -> int:
    """A queued sweep of STUDY whose name, description and question are hostile."""
    spec = {"name": f"spec {EVIL}", "study": STUDY, "description": EVIL, "dataset": "mnist", "epochs": 1,
            "replicates": 1, "model": {"hidden": [8]},
            "questions": [{"ask": f"ask {EVIL}", "compare": [EVIL]}]}
    answer = httpx.post(server.url + "/api/sweeps", json=spec, timeout=30)
    assert answer.status_code == 201, answer.text[:500]
    sweep_id: int = answer.json()["id"]
    return sweep_id


def _assert_clean(p: Any, where: str, *shown: str) -> dict[str, Any]:
    found: dict[str, Any] = p.evaluate(INJECTED)
    assert found["xss"] is None, f"{where}: user text ran as script"
    assert found["imgs"] == 0 and found["scripts"] == 0, f"{where}: user text became an element {found}"
    assert found["jsLinks"] == 0 and found["svgLinks"] == 0, f"{where}: user text became a link"
    for text in shown:
        assert text in found["text"], f"{where}: {text!r} is not shown as typed"
    hover = p.evaluate(HOVER_ALL)
    assert hover["links"] == 0, f"{where}: a hover label made a link"
    assert p.evaluate("window.__xss") is None, f"{where}: a hover ran user text"
    return hover


def test_hostile_text_runs_nowhere_and_shows_as_typed(page: Page, live_server: LiveServer) -> None:
    dialogs: list[str] = []
    page.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    external, run_id = _external(live_server)
    mlflow = _mlflow(live_server)
    spec = _spec_sweep(live_server)
    configs = [c["id"] for c in httpx.get(f"{live_server.url}/api/sweeps/{external}/configs", timeout=30).json()]

    p = page.open("/")
    _assert_clean(p, "index", EVIL, STUDY)
    p = page.open(f"/?study={quote(STUDY)}")
    _assert_clean(p, "index of the study", EVIL)

    p = page.open(f"/studies/{quote(STUDY, safe='')}")
    p.wait_for_function("() => document.querySelectorAll('.question .js-plotly-plot').length > 0", timeout=20_000)
    hover = _assert_clean(p, "study", STUDY, f"ask {EVIL}", EVIL)
    assert any("<i>it</i>" in t or "<b>bold</b>" in t for t in hover["texts"]), hover  # markup as typed

    p = page.open(f"/sweeps/{external}")
    p.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=20_000)
    hover = _assert_clean(p, "external sweep", EVIL, KEY)
    texts = p.evaluate(SVG_TEXT)
    assert any(IMG in t for t in texts), texts  # the axis, its values and the metric key as typed
    assert any("<b>bold</b>" in t for t in texts), texts
    # Parcoords draws its tick texts as plain text (the pages pass them unescaped): as typed, not bold.
    p.locator("#parcoords-chart").scroll_into_view_if_needed()  # drawn once it comes into view
    p.wait_for_function("() => document.querySelectorAll('#parcoords-chart .tick text').length > 0", timeout=20_000)
    ticks = p.evaluate("() => [...document.querySelectorAll('#parcoords-chart .tick text')]"
                       ".map((t) => [t.textContent, t.querySelectorAll('tspan').length])")
    assert [f"<b>bold</b>{IMG}", 0] in ticks, ticks
    _assert_clean(p, "external sweep with its parallel coordinates", KEY)
    assert any(KEY in t for t in p.evaluate(SVG_TEXT.replace(".js-plotly-plot", "#parcoords-chart")))  # its label

    p = page.open(f"/runs/{run_id}")
    _assert_clean(p, "run", EVIL)
    config = p.locator("pre.config").text_content()
    assert '"k<img src=x onerror=\\"window.__xss=1\\">": "<i>it</i>' in config, config  # the config's JSON as typed
    assert any(METRIC.replace("_", " ") in t for t in p.evaluate(SVG_TEXT))  # its title: _ as spaces

    p = page.open(f"/sweeps/{mlflow}")
    _assert_clean(p, "mlflow sweep", f"mlflow {EVIL}", f"p{IMG}", f"{LINK}0")  # the param is an axis

    p = page.open(f"/sweeps/{spec}")
    _assert_clean(p, "spec sweep", f"spec {EVIL}")
    p = page.open(f"/sweeps/new?from={spec}")
    assert p.locator("#f-name").input_value() == f"spec {EVIL} (copy)"
    _assert_clean(p, "new sweep from the spec")

    p = page.open(f"/compare?configs={configs[0]},{configs[1]}")
    _assert_clean(p, "compare", EVIL)
    assert dialogs == [] and page.errors == [], (dialogs, page.errors)


def test_the_reports_run_no_hostile_text_opened_from_disk(page: Page, live_server: LiveServer,
                                                          tmp_path: Path) -> None:
    external, _ = _external(live_server)
    _spec_sweep(live_server)
    dialogs: list[str] = []
    page.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for path in (f"/api/studies/{quote(STUDY, safe='')}/report.html", f"/api/sweeps/{external}/report.html"):
        answer = httpx.get(live_server.url + path, timeout=120)
        assert answer.status_code == 200, answer.text[:300]
        saved = tmp_path / "report.html"
        saved.write_bytes(answer.content)
        p = page.page
        p.goto(saved.as_uri(), wait_until="load")
        p.wait_for_selector("body[data-ready]", timeout=30_000, state="attached")
        assert p.evaluate("document.body.dataset.ready") == "true", page.errors
        hover = _assert_clean(p, path, EVIL)
        texts = p.evaluate(SVG_TEXT)
        assert any("<b>bold</b>" in t for t in texts + hover["texts"]), texts
        assert any(METRIC.replace("_", " ") in t for t in texts) or "study" in path, texts
    assert dialogs == [] and page.errors == [], (dialogs, page.errors)


def test_hostile_text_in_the_address_is_not_reflected_as_markup(page: Page) -> None:
    """Pages and error pages that echo a path or query (an unknown study or dataset, a bad config
    list, a study filter) show it as text: a link someone is sent runs nothing."""
    dialogs: list[str] = []
    page.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    evil = quote(EVIL, safe="")
    for path in (f"/studies/{evil}", f"/datasets/{evil}", f"/compare?configs={evil}", f"/?study={evil}",
                 f"/sweeps/{evil}", f"/runs/{evil}", f"/sweeps/new?from={evil}", f"/api/sweeps/{evil}",
                 f"/api/studies/{evil}/report.html", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={evil}"):
        response = page.page.goto(page.base + path, wait_until="load")
        assert response is not None and response.status < 500, (path, response and response.status)
        found = page.page.evaluate(INJECTED)
        assert found["xss"] is None and found["imgs"] == 0 and found["scripts"] == 0, (path, found)
        assert found["jsLinks"] == 0, (path, found)
        if "html" in (response.headers.get("content-type") or ""):
            assert "<img" not in response.text() or "&lt;img" in response.text(), path
    assert dialogs == [], dialogs
