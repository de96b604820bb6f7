"""Hostile or careless text where the pages and the LaTeX table show it, without a browser
(tests/e2e/test_hostile_text.py opens the same in Chromium): a run's config reads as typed on its
page (not as `tojson`'s \\u003c escapes), a free-text dataset name is a link that reaches its
page, and a config key that is a LaTeX command is a column heading printed as typed."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.services.latex import latex_escape

CONFIG = {"note": "<b>bold</b> & 'quoted' \"double\" η²", "</script><script>window.__xss=1</script>": 1}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _run(api: TestClient, config: dict[str, Any], seed: int = 0, **extra: Any) -> dict[str, Any]:
    answer = api.post("/api/external/runs", json={"sweep": "hostile", "config": config, "seed": seed, **extra})
    assert answer.status_code == 201, answer.text
    run: dict[str, Any] = answer.json()
    return run


def test_the_run_page_shows_the_config_as_typed(api: TestClient) -> None:
    run = _run(api, CONFIG)
    page = api.get(f"/runs/{run['id']}").text
    found = re.search(r'<pre class="config">(.*?)</pre>', page, re.S)
    assert found is not None
    shown = html.unescape(found.group(1))  # what a reader sees
    assert json.loads(shown) == CONFIG
    assert "\\u" not in shown, shown  # neither <, >, &, ' nor η² as escapes
    assert "<b>" not in found.group(1) and "<script>" not in found.group(1)  # escaped in the HTML


def test_a_free_text_dataset_name_links_to_its_page(api: TestClient) -> None:
    dataset = "my data?v=2#x&y"
    run = _run(api, {"width": 8}, dataset=dataset)
    href = f'href="/datasets/{html.escape(quote(dataset))}"'
    for path in ("/", f"/sweeps/{run['sweep_id']}"):
        page = api.get(path).text
        assert href in page, (path, re.findall(r'href="/datasets/[^"]*"', page))


def test_a_config_key_that_is_a_latex_command_is_a_heading_as_typed(api: TestClient) -> None:
    key = r"\input{/etc/passwd}^^5c%"
    for i, value in enumerate((r"\def\x{1}", "$x$ & y")):
        run = _run(api, {key: value, "width": 8}, seed=i)
        for epoch in (1, 2):
            assert api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": epoch, "metrics": {
                "val_accuracy": 0.5 + 0.1 * i, "accuracy": 0.5, "loss": 1.0, "val_loss": 1.0}}).status_code == 200
        assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).status_code == 200
    tex = api.get(f"/api/sweeps/{run['sweep_id']}/table.tex").text
    lines = tex.splitlines()
    head = lines[lines.index(r"\midrule") - 1]
    assert head.startswith(r"\textbackslash{}input\{/etc/passwd\}\textasciicircum{}\textasciicircum{}5c\% & $n$ &")
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert body[0].startswith(r"\textbackslash{}def\textbackslash{}x\{1\} & 1 &")
    assert body[1].startswith(r"\$x\$ \& y & 1 &")
    assert r"\input" not in tex and r"\def" not in tex and "^^" not in tex


def test_csv_cells_run_no_formula_where_the_separator_is_a_semicolon(api: TestClient) -> None:
    """Excel in a locale whose list separator is `;` (German, French, ...) splits a comma CSV at
    semicolons, so a text cell `x;=cmd|...` puts a formula at the start of a column of its own:
    a semicolon followed by a formula character gets the single quote too."""
    run = _run(api, {"x;=cmd|' /C calc'!A0;": 1, "y": "a; +1"})
    assert api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": {
        'k;"@SUM(A1)': 0.5, "plain;key": 0.25}}).status_code == 200
    text = api.get(f"/api/sweeps/{run['sweep_id']}/metrics.csv").text
    for line in text.splitlines()[1:]:
        for field in line.split(";")[1:]:  # as such a spreadsheet splits the line (quotes mid-field are text)
            assert not field.lstrip(' "').startswith(("=", "+", "-", "@", "\t", "\r")), (line, field)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["config_label"] for r in rows} == {"x;'=cmd|' /C calc'!A0;'=1 · y=\"a;' +1\""}
    assert sorted(r["key"] for r in rows) == sorted(['k;\'"@SUM(A1)', "plain;key"])


def test_latex_cells_keep_a_leading_star_and_double_dashes(api: TestClient) -> None:
    """A row's first cell follows `\\\\`, which takes a `*` after it (even past the line break) as
    its starred form, and `--` prints as an en dash: both are braced so they print as typed."""
    for i, value in enumerate(("*starred", "--flag")):
        run = _run(api, {"opt": value, "width": 8}, seed=i)
        assert api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": {
            "val_accuracy": 0.5 + 0.1 * i}}).status_code == 200
        assert api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).status_code == 200
    lines = api.get(f"/api/sweeps/{run['sweep_id']}/table.tex").text.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert [row.split(" & ")[0] for row in body] == ["{*}starred", "-{}-flag"]
    assert latex_escape("a---b") == "a-{}-{}-b" and latex_escape("x-y") == "x-y"


def test_a_study_name_with_slashes_and_dots_links_to_its_own_page(api: TestClient) -> None:
    """A study named "a/../b": every link to it escapes the "/" (Jinja's urlencode kept it, and the
    browser shortened /studies/a/../b to /studies/b, another study's page), and each reaches it.
    (A name without such a part keeps its "/" readable: tests/integration/test_questions.py.)"""
    study = "a/../b"
    run = _run(api, {"width": 8}, study=study)
    quoted = quote(study, safe="")
    links = {
        "/": [f'href="/studies/{quoted}"', f'href="/?study={quoted}"'],
        f"/sweeps/{run['sweep_id']}": [f'href="/studies/{quoted}"'],
        f"/studies/{quoted}": [f'href="/api/studies/{quoted}/report.html"', f'href="/?study={quoted}"'],
    }
    for path, hrefs in links.items():
        page = api.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        for href in hrefs:
            assert href in page.text, (path, href, re.findall(r'href="[^"]*stud[^"]*"', page.text))
    assert study in html.unescape(api.get(f"/studies/{quoted}").text)
    report = api.get(f"/api/studies/{quoted}/report.html")
    assert report.status_code == 200 and study in html.unescape(report.text)
