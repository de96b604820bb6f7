"""Text from users shows as text on every chart, in Debian's Chromium: Plotly reads the strings it
draws as markup (<a href>, <b>, <span style>), so a sweep name or config label holding markup must
reach the SVG as literal characters, and a `%{...}` in it is never expanded by a hovertemplate."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, update

from app.db import write_session
from app.models import Config
from app.services import charts
from tests.e2e.test_pages import CHROMIUM, Page, browser, page  # noqa: F401  (fixtures)
from tests.integration.test_charts_api import WIDTHS_SPEC, seed_sweep

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

EVIL = '<a href="http://evil">x</a><b>bold</b> %{y} &amp;'
# Config labels come from users too: an external run's label is its config dict, as typed.
EVIL_LABEL = '<span style="color:red">red</span><br>k=<i>v</i>'

CHART_TEXT = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  return {
    links: plots.reduce((n, p) => n + p.querySelectorAll('svg a').length, 0),
    styled: plots.reduce((n, p) => n + [...p.querySelectorAll('svg tspan')].filter(
      (t) => /font-weight:\\s*bold|font-style:\\s*italic|color:\\s*red/.test(t.getAttribute('style') || '')).length, 0),
    texts: plots.flatMap((p) => [...p.querySelectorAll('svg text')].map((t) => t.textContent)),
  };
}"""

HOVER = """([id, uid]) => {
  const gd = document.getElementById(id);
  const curve = gd.data.findIndex((t) => t.uid === uid);
  Plotly.Fx.hover(gd, [{ curveNumber: curve, pointNumber: 1 }]);
  const layer = gd.querySelector('.hoverlayer');
  return { text: [...layer.querySelectorAll('text')].map((t) => t.textContent).join(' | '),
           links: layer.querySelectorAll('a').length };
}"""


def _seed(engine: Engine) -> tuple[Any, Any]:
    named = seed_sweep(engine, {**WIDTHS_SPEC, "name": EVIL, "grid": {}, "replicates": 3})
    labelled = seed_sweep(engine, {**WIDTHS_SPEC, "name": "plain"})
    first = charts.config_infos(engine, labelled.id)[0]["id"]
    with write_session(engine) as s:
        s.execute(update(Config).where(Config.id == first).values(label=EVIL_LABEL))
    charts.memo.clear()
    return named, labelled


def _assert_literal(shown: dict[str, Any], *expected: str) -> None:
    assert shown["links"] == 0, "an <a> from user text became a link in the SVG"
    assert shown["styled"] == 0, "<b>, <i> or a style from user text was rendered"
    for text in expected:
        assert any(text in t for t in shown["texts"]), (text, shown["texts"])


def test_user_text_is_text_on_the_sweep_and_compare_pages(page: Page, engine: Engine) -> None:  # noqa: F811
    named, labelled = _seed(engine)
    named_config = charts.config_infos(engine, named.id)[0]["id"]
    labelled_config = charts.config_infos(engine, labelled.id)[0]["id"]

    p = page.open(f"/sweeps/{named.id}")
    _assert_literal(p.evaluate(CHART_TEXT), EVIL)
    for uid in (f"{named_config}-mean", next(t["uid"] for t in p.evaluate(
            "() => document.getElementById('curve-loss').data") if t["uid"].startswith("r"))):
        hover = p.evaluate(HOVER, ["curve-loss", uid])
        assert hover["links"] == 0 and EVIL in hover["text"], hover  # %{y} in the name stays as typed

    p = page.open(f"/sweeps/{labelled.id}")
    _assert_literal(p.evaluate(CHART_TEXT), "red")
    legend = p.evaluate("() => [...document.querySelectorAll('#curve-loss .legendtext')].map((t) => t.textContent)")
    assert EVIL_LABEL in legend, legend

    p = page.open(f"/compare?configs={named_config},{labelled_config}")
    shown = p.evaluate(CHART_TEXT)
    _assert_literal(shown, EVIL, f"plain · {EVIL_LABEL}")
    ticks = p.evaluate("() => [...document.querySelectorAll('#compare-final .xtick text')].map((t) => t.textContent)")
    assert EVIL in ticks and f"plain · {EVIL_LABEL}" in ticks, ticks
    page.shot("chart-text")
    assert page.errors == []
