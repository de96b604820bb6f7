"""The reports to hand in: a sweep's and a study's self-contained HTML report (numbers against an
independent computation: numpy/scipy for means and CIs, scipy's Welch test, statsmodels' Holm),
hostile labels escaped in the page and in its charts' JSON, nothing fetched from anywhere, the
LaTeX table (booktabs, escaped), the PDF's 501/503 answers without a browser, 404s.

Runs are logged through the external-run API, as a notebook would, with known final values."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine
from statsmodels.stats.multitest import multipletests

from app.config import Settings
from app.main import create_app
from app.services import report_pdf
from app.services.latex import latex_escape
from tests.conftest import make_settings

HOSTILE = "</script><img src=x onerror=alert(1)>"
PROVENANCE = {"sweeplab": "0.1.0", "python": "3.11.2", "tensorflow": "2.16.1", "keras": "3.3.3",
              "numpy": "1.26.4", "dataset": "mnist", "dataset_sha256": "a" * 24 + "5eed" + "b" * 36,
              "host": "lab-pc", "cpu": "Test CPU @ 2GHz", "gpu": "none", "packed": False}
# Final val_accuracy per config (by its width) and seed: unequal n, w32 and w128 close, w8 far worse.
FINALS = {8: [0.80, 0.82, 0.81, 0.79], 32: [0.90, 0.912, 0.893], 128: [0.905, 0.917, 0.901]}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def log_run(api: TestClient, sweep: str, config: dict[str, Any], seed: int, final: float | str, *,
            status: str = "succeeded", study: str | None = None, provenance: dict[str, Any] | None = None) -> int:
    """One external run: epochs 1 and 2, the final val_accuracy at epoch 2, then finished."""
    body: dict[str, Any] = {"sweep": sweep, "config": config, "seed": seed, "epochs": 2, "dataset": "mnist",
                            "provenance": provenance or {**PROVENANCE, "seed": seed}}
    if study:
        body["study"] = study
    run = api.post("/api/external/runs", json=body)
    assert run.status_code == 201, run.text
    run_id: int = run.json()["id"]
    for epoch, value in ((1, 0.5), (2, final)):
        acc = 0.6 if epoch == 1 else 0.95
        metrics = {"val_accuracy": value, "accuracy": acc, "loss": 1.0 / epoch, "val_loss": 1.1 / epoch}
        assert api.post(f"/api/runs/{run_id}/epochs", json={"epoch": epoch, "metrics": metrics}).status_code == 200
    assert api.post(f"/api/runs/{run_id}/finish", json={"status": status}).status_code == 200
    return run_id


def log_widths(api: TestClient, sweep: str = "widths", study: str | None = None,
               extra: dict[str, Any] | None = None) -> int:
    for width, values in FINALS.items():
        for seed, value in enumerate(values):
            log_run(api, sweep, {"width": width, **(extra or {})}, seed, value, study=study)
    log_run(api, sweep, {"width": 32, **(extra or {})}, 9, 0.1, status="failed", study=study)  # left out
    sweeps = [s for s in api.get("/api/sweeps").json() if s["name"] == sweep]
    sweep_id: int = sweeps[0]["id"]
    return sweep_id


# ---- a tiny DOM from the standard library's parser --------------------------------------------

class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in (c.attrs.get("class") or "").split()):
                    out.append(c)
                out += c.all(tag, cls)
        return out


VOID = {"meta", "link", "img", "br", "hr", "input", "source", "area", "base", "col", "embed", "track", "wbr"}


class Dom(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.at = self.root
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.at)
        self.at.children.append(node)
        if tag not in VOID:
            self.at = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.at = node.parent

    def handle_data(self, data: str) -> None:
        self.at.children.append(data)


def cells(row: Node) -> list[str]:
    return [" ".join(td.text().split()) for td in row.all("td")]


def config_rows(dom: Dom) -> dict[str, list[str]]:
    """The config table's rows by config name."""
    table = next(t for t in dom.root.all("table") if "configs" in (t.attrs.get("class") or "").split())
    return {r[0]: r for r in (cells(tr) for tr in table.all("tr")) if r}


def figures_of(dom: Dom) -> list[dict[str, Any]]:
    script = next(s for s in dom.root.all("script") if s.attrs.get("id") == "report-figures")
    figures: list[dict[str, Any]] = json.loads(script.text())
    return figures


def half_width(xs: list[float]) -> float:
    a = np.array(xs)
    return float(scipy_stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def fetches(dom: Dom, html: str) -> list[str]:
    """Every way the page could load something from elsewhere: src/href/action/poster/data/srcset
    attributes that are not in-page anchors or data: URLs, <link> and <base> tags, CSS url()/@import."""
    found = []
    for node in dom.root.all():
        for name in ("src", "href", "action", "poster", "data", "srcset", "formaction", "background"):
            value = (node.attrs.get(name) or "").strip()
            if value and not value.startswith(("#", "data:")):
                found.append(f"<{node.tag} {name}={value}>")
        if node.tag in ("base", "iframe", "object", "embed"):
            found.append(f"<{node.tag}>")
    for style in dom.root.all("style"):
        found += re.findall(r"url\([^)]*\)|@import[^;]*", style.text())
    found += [f"<link {n.attrs}>" for n in dom.root.all("link") if n.attrs.get("rel") != "icon"]
    return found


# ---- the sweep report -------------------------------------------------------------------------

def test_sweep_report_has_the_numbers_the_verdicts_and_the_methods(api: TestClient) -> None:
    sweep_id = log_widths(api)
    answer = api.get(f"/api/sweeps/{sweep_id}/report.html")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-disposition"] == f'attachment; filename="sweep-{sweep_id}-widths-report.html"'
    html = answer.text
    dom = Dom(html)

    # The config table: mean ± 95% CI half-width in percent, n and seeds, against numpy and scipy.
    rows = config_rows(dom)
    for width, xs in FINALS.items():
        row = rows[f"width={width}"]
        mean, half = 100 * float(np.mean(xs)), 100 * half_width(xs)
        assert row[1] == str(len(xs))
        assert row[2] == ("0\N{EN DASH}3" if len(xs) == 4 else "0\N{EN DASH}2")
        assert row[3].startswith(f"{mean:.2f} ± {half:.2f} [{mean - half:.2f}, {mean + half:.2f}]"), row
    assert rows["width=32"][5] == "3/4"  # the failed run counts among the runs, not the replicates

    # Verdicts: the best by mean, each other config's Welch p and Holm's adjustment over the family.
    best = max(FINALS, key=lambda w: float(np.mean(FINALS[w])))
    assert best == 128
    others = [w for w in FINALS if w != best]
    ps = [float(scipy_stats.ttest_ind(FINALS[w], FINALS[best], equal_var=False).pvalue) for w in others]
    holm = multipletests(ps, method="holm")[1]
    verdict_table = next(t for t in dom.root.all("table") if "configs" not in (t.attrs.get("class") or "")
                         and "p (Holm)" in t.text())
    vrows = {r[0]: r for r in (cells(tr) for tr in verdict_table.all("tr")) if r}
    assert vrows["width=128"][-1] == "best"

    def p_text(p: float) -> str:
        return "< 0.001" if p < 0.001 else f"{p:.3f}"

    for w, p, adjusted in zip(others, ps, holm, strict=True):
        row = vrows[f"width={w}"]
        diff = 100 * (np.mean(FINALS[w]) - np.mean(FINALS[best]))
        assert row[3] == f"{diff:+.2f}"
        assert (row[5], row[6]) == (p_text(p), p_text(float(adjusted)))
        assert row[-1] == ("worse" if adjusted < 0.05 else "indistinguishable")
    sentences = [" ".join(li.text().split()) for li in dom.root.all("li")
                 if "verdict-sentences" in (li.parent.attrs.get("class") or "")]  # type: ignore[union-attr]
    verdicts = api.get(f"/api/sweeps/{sweep_id}/verdicts").json()
    assert sentences == [c["text"] for c in verdicts["comparisons"]]
    assert any("width=8 is worse than the best, width=128" in s for s in sentences)
    assert any("width=32 is indistinguishable from the best, width=128" in s for s in sentences)

    # The methods paragraph: design, tests, correction, power, versions, dataset hash, generator.
    methods = " ".join(" ".join(p.text().split()) for p in dom.root.all("div", "methods")[0].all("p"))
    for phrase in ("3 configurations", "between 3 and 4 succeeded replicates", "1 failed",
                   "Welch's unequal-variances t-test", "Holm's step-down method", "the 2 p-values",
                   "can tell apart differences of", "power 0.8", "sweeplab 0.1.0", "Python 3.11.2",
                   "TensorFlow 2.16.1", "Keras 3.3.3", "NumPy 1.26.4", "on host lab-pc", "CPU Test CPU @ 2GHz",
                   f"sha256 {PROVENANCE['dataset_sha256']}", "Report generated on", "by sweeplab"):
        assert phrase in methods, phrase
    pooled = math.sqrt(sum((len(xs) - 1) * np.var(xs, ddof=1) for xs in FINALS.values())
                       / sum(len(xs) - 1 for xs in FINALS.values()))
    assert f"pooled standard deviation of {100 * pooled:.2f} points" in methods

    # Charts: one div per figure, each with data; nothing fetched from anywhere.
    figures = figures_of(dom)
    divs = [d.attrs["id"] for d in dom.root.all("div", "chart")]
    assert divs == [f["id"] for f in figures] and len(figures) >= 6  # 4 curves, vs width, importance, parcoords
    assert all(f["data"] for f in figures)
    assert fetches(dom, html) == []
    assert [s.attrs for s in dom.root.all("script") if s.attrs.get("src")] == []
    assert "Plotly.newPlot" in html and len(html) > 3_000_000  # plotly.min.js is inside
    assert "importance-text" in html and "width explains" in html


def test_hostile_labels_are_text_in_the_page_and_in_the_charts(api: TestClient) -> None:
    for seed, value in enumerate((0.8, 0.82)):
        log_run(api, HOSTILE, {"note": HOSTILE, "width": 8}, seed, value, study=HOSTILE)
    for seed, value in enumerate((0.9, 0.91)):
        log_run(api, HOSTILE, {"note": HOSTILE, "width": 16}, seed, value, study=HOSTILE)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    for path in (f"/api/sweeps/{sweep_id}/report.html", f"/api/studies/{HOSTILE}/report.html"):
        answer = api.get(path)
        assert answer.status_code == 200, path
        html = answer.text
        assert HOSTILE not in html and "<img" not in html and "onerror=alert(1)>" not in html
        dom = Dom(html)
        assert dom.root.all("img") == []
        scripts = dom.root.all("script")
        assert len(scripts) == 3  # plotly, the figures' JSON, the drawing script: none was cut short
        assert HOSTILE in dom.root.all("h1")[0].text()  # shown as typed
        assert any(HOSTILE in td.text() for td in dom.root.all("td"))
        # In the JSON, < and > are \u003c and \u003e; in what Plotly reads, entities it shows as typed.
        raw = scripts[1].text()
        assert "<" not in raw and ">" not in raw
        text = json.dumps(figures_of(dom))
        assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
        assert "</script" not in text and "<img" not in text
        assert answer.headers["content-disposition"].endswith('-report.html"')
        assert re.fullmatch(r'attachment; filename="[a-z0-9-]+-report\.html"', answer.headers["content-disposition"])


def test_a_sweep_without_results_still_has_a_report(api: TestClient, engine: Engine) -> None:
    """No run succeeded (one is still running): every section says so instead of failing."""
    run = api.post("/api/external/runs", json={"sweep": "early", "config": {"width": 8}, "seed": 0})
    sweep_id = run.json()["sweep_id"]
    answer = api.get(f"/api/sweeps/{sweep_id}/report.html", params={"inline": "true"})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].startswith("inline; ")
    assert "No run has succeeded yet" in answer.text
    assert "The runs recorded no provenance" in answer.text or "provenance" in answer.text
    assert figures_of(Dom(answer.text)) == []


def test_nan_finals_are_dropped_and_said_so(api: TestClient) -> None:
    for width, values in ((8, [0.8, 0.81, "NaN"]), (32, [0.9, 0.91, 0.905])):
        for seed, value in enumerate(values):
            log_run(api, "diverged", {"width": width}, seed, value)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    html = api.get(f"/api/sweeps/{sweep_id}/report.html").text
    assert "1 final values that were not real numbers (NaN, infinite) were dropped" in html
    rows = config_rows(Dom(html))
    assert rows["width=8"][1] == "2"  # n counts the finite finals only
    assert rows["width=8"][3].startswith(f"{100 * np.mean([0.8, 0.81]):.2f} ± {100 * half_width([0.8, 0.81]):.2f}")


def test_detect_sizes_the_seeds_and_is_validated(api: TestClient) -> None:
    sweep_id = log_widths(api)
    html = api.get(f"/api/sweeps/{sweep_id}/report.html", params={"detect": 0.005}).text
    verdicts = api.get(f"/api/sweeps/{sweep_id}/verdicts", params={"detect": 0.005}).json()
    needed = verdicts["power"]["replicates_needed"]
    assert isinstance(needed, int) and f"would need {needed} seeds per config" in html
    for bad in ("-1", "0", "nan", "inf", "x"):
        answer = api.get(f"/api/sweeps/{sweep_id}/report.html", params={"detect": bad})
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["fields"][0]["loc"] == "query.detect"


def test_study_report_has_every_sweep_and_the_questions_answered(api: TestClient, engine: Engine) -> None:
    from app.services.questions import study_questions
    from app.services.sweeps import create_sweep, parse_spec

    log_widths(api, "widths", study="my study")
    log_widths(api, "widths again", study="my study", extra={"depth": 2})
    # A queued sweep of the study declares its question (specs carry them; no run of it needed).
    create_sweep(engine, parse_spec({"name": "planned", "study": "my study", "epochs": 1, "questions": [
        {"ask": "Does the second widths sweep differ from the first?", "compare": ["widths", "widths again"]}]}),
        10_000, 3)
    answer = api.get("/api/studies/my study/report.html")
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="study-my-study-report.html"'
    dom = Dom(answer.text)
    assert [h.text() for h in dom.root.all("h2")] == ["Questions of the study", "Sweep: widths",
                                                      "Sweep: widths again", "Sweep: planned"]
    question = dom.root.all("div", "question")[0]
    answered = study_questions(engine, "my study")[0]
    assert question.all("h3")[0].text() == "Does the second widths sweep differ from the first?"
    assert " ".join(question.all("p")[0].text().split()) == " ".join(answered["text"].split())
    assert answered["text"]
    assert len(question.all("div", "chart")) == 1
    figures = figures_of(dom)
    assert [d.attrs["id"] for d in dom.root.all("div", "chart")] == [f["id"] for f in figures]
    assert fetches(dom, answer.text) == []


# ---- LaTeX ----------------------------------------------------------------------------------------

def test_chart_titles_are_clipped_as_the_pages_clip_them() -> None:
    """Plotly wraps no title: a KEY_CHARS-long metric key keeps its start and end, whole
    characters only, and a short title stays as it is (static/common.js's clip, tested in Chromium
    by tests/e2e/test_vocabulary.py)."""
    from app.metrics import KEY_CHARS
    from app.services.report_figures import TITLE_CHARS, Y_TITLE_CHARS, clip, layout

    key = "val_" + "x" * (KEY_CHARS - 7) + "end"
    shown = layout(f"final {key}", "epoch", key)
    title, y_title = shown["title"]["text"], shown["yaxis"]["title"]["text"]
    assert len(title) == TITLE_CHARS and title.startswith("final val_x") and title.endswith("end") and "…" in title
    assert len(y_title) == Y_TITLE_CHARS and y_title.startswith("val_") and y_title.endswith("end")
    assert layout("loss", "epoch", "loss")["title"]["text"] == "loss"
    assert clip("αβγδεζηθικ", 5) == "αβγ…κ"


def test_latex_escape_covers_every_special_character() -> None:
    assert latex_escape(r"a&b%c$d#e_f{g}h~i^j\k") == \
        r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    assert latex_escape("[32, 64] <x>|\nnext") == r"{[}32, 64{]} \textless{}x\textgreater{}\textbar{} next"


def test_table_tex_has_booktabs_rows_and_escaped_labels(api: TestClient) -> None:
    nasty = r"a&b%c$d#e_f{g}h~i^j\k"
    for seed, value in enumerate((0.8, 0.82, 0.81)):
        log_run(api, f"tex {nasty}", {"note": nasty, "width": 8}, seed, value)
    for seed, value in enumerate((0.9, 0.91)):
        log_run(api, f"tex {nasty}", {"note": nasty, "width": [32, 64]}, seed, value)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    answer = api.get(f"/api/sweeps/{sweep_id}/table.tex")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/x-tex")
    name = f"sweep-{sweep_id}-tex-a-b-c-d-e-f-g-h-i-j-k-table.tex"
    assert answer.headers["content-disposition"] == f'attachment; filename="{name}"'
    tex = answer.text
    lines = tex.splitlines()
    top, mid, bottom = lines.index(r"\toprule"), lines.index(r"\midrule"), lines.index(r"\bottomrule")
    assert top < mid < bottom and r"\begin{tabular}" in lines[top - 1] and lines[bottom + 1] == r"\end{tabular}"
    escaped = r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    assert f"sweep ``tex {escaped}''" in tex
    body = lines[mid + 1:bottom]
    assert len(body) == 2  # one row per config
    # Only the width varies, so it is the one setting column; the note is the same in both configs.
    assert lines[mid - 1].startswith(r"width & $n$ & Validation accuracy (\%) & Training accuracy (\%)")
    for row, xs, width in ((body[0], [0.8, 0.82, 0.81], "8"), (body[1], [0.9, 0.91], "{[}32, 64{]}")):
        m, h = 100 * float(np.mean(xs)), 100 * half_width(xs)
        best = width != "8"
        mean_text = rf"\mathbf{{{m:.2f}}}" if best else f"{m:.2f}"
        assert row == rf"{width} & {len(xs)} & ${mean_text} \pm {h:.2f}$ & $95.00 \pm 0.00$ \\", row
        assert row.count("&") == 3  # no unescaped & from a label
    assert r"\usepackage{booktabs}" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (Debian: texlive-latex-recommended)")
def test_table_tex_compiles_and_prints_labels_as_typed(api: TestClient, tmp_path: Path) -> None:
    nasty = r"a&b%c$d#e_f{g}h~i^j\k <x>|[y] \end{document}"
    for width, values in ((8, (0.8, 0.82)), (16, (0.9, 0.91))):
        for seed, value in enumerate(values):
            log_run(api, f"tex {nasty}", {"note": nasty, "width": [width, 64]}, seed, value)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    (tmp_path / "table.tex").write_text(api.get(f"/api/sweeps/{sweep_id}/table.tex").text)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
                                      "\\begin{document}\\input{table}\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "doc.pdf", "-"], cwd=tmp_path, capture_output=True, text=True).stdout
        assert "[8, 64]" in text and "[16, 64]" in text and "\\end{document}" in text


def test_table_tex_names_the_config_when_nothing_varies(api: TestClient) -> None:
    log_run(api, "single", {"lr": 0.1}, 0, 0.7)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    tex = api.get(f"/api/sweeps/{sweep_id}/table.tex").text
    assert r"Config & $n$ &" in tex
    assert r"lr=0.1 & 1 & $\mathbf{70.00}$ & $95.00$ \\" in tex  # one replicate: no interval


# ---- not found, not available, busy ------------------------------------------------------------

def test_unknown_sweeps_and_studies_are_404(api: TestClient) -> None:
    log_run(api, "known", {"width": 8}, 0, 0.8, study="known study")
    for path in ("/api/sweeps/999999/report.html", "/api/sweeps/999999/report.pdf", "/api/sweeps/999999/table.tex",
                 "/api/studies/no such study/report.html", "/api/studies/no such study/report.pdf",
                 "/api/studies/known%20study%2Fx/report.html", "/api/studies/%00/report.html"):
        answer = api.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found"
    assert api.get("/api/studies/known%20study/report.html").status_code == 200


def test_pdf_without_chromium_is_501_naming_it(settings: Settings, engine: Engine, data_dir: Path,
                                                tmp_path: Path) -> None:
    missing = tmp_path / "no-chromium-here"
    with TestClient(create_app(make_settings(settings.database_url, data_dir, tmp_path / "a",
                                             report_chromium_path=missing))) as api:
        log_run(api, "pdf", {"width": 8}, 0, 0.8)
        sweep_id = api.get("/api/sweeps").json()[0]["id"]
        for path in (f"/api/sweeps/{sweep_id}/report.pdf", "/api/studies/x/report.pdf"):
            if "studies" in path:
                log_run(api, "pdf2", {"width": 8}, 0, 0.8, study="x")
            answer = api.get(path)
            assert answer.status_code == 501, answer.text
            error = answer.json()["error"]
            assert error["code"] == "report_unavailable"
            assert str(missing) in error["message"] and "Chromium" in error["message"]
            assert "SWEEPLAB_REPORT_CHROMIUM_PATH" in error["message"]


def test_pdf_without_playwright_is_501_naming_it(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """As where the `report` extra is not installed: the import of playwright fails."""
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # `import` raises ImportError
    log_run(api, "pdf", {"width": 8}, 0, 0.8)
    sweep_id = api.get("/api/sweeps").json()[0]["id"]
    answer = api.get(f"/api/sweeps/{sweep_id}/report.pdf")
    assert answer.status_code == 501
    assert "playwright" in answer.json()["error"]["message"] and "sweeplab[report]" in answer.json()["error"]["message"]


def test_a_second_pdf_while_one_renders_is_503(settings: Settings, engine: Engine, data_dir: Path,
                                               tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    executable = tmp_path / "chromium"  # any executable passes the check; the browser is never started here
    executable.write_text("#!/bin/sh\nexit 1\n")
    executable.chmod(0o755)
    with TestClient(create_app(make_settings(settings.database_url, data_dir, tmp_path / "a",
                                             report_chromium_path=executable))) as api:
        log_run(api, "pdf", {"width": 8}, 0, 0.8)
        sweep_id = api.get("/api/sweeps").json()[0]["id"]
        assert report_pdf._rendering.acquire(blocking=False)  # as a render in progress holds it
        try:
            answer = api.get(f"/api/sweeps/{sweep_id}/report.pdf")
        finally:
            report_pdf._rendering.release()
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "report_busy"
        # Free again: this "browser" cannot start, which is a 501 naming it, and the lock is let go.
        answer = api.get(f"/api/sweeps/{sweep_id}/report.pdf")
        assert answer.status_code == 501 and "did not start" in answer.json()["error"]["message"]
        assert report_pdf._rendering.acquire(blocking=False)
        report_pdf._rendering.release()


def test_the_sweep_page_links_its_report_pdf_and_table(api: TestClient) -> None:
    sweep_id = log_widths(api)
    page = Dom(api.get(f"/sweeps/{sweep_id}", headers={"accept": "text/html"}).text)
    links = {a.attrs.get("id"): a.attrs.get("href") for a in page.root.all("a")
             if (a.attrs.get("id") or "").startswith("report-")}
    assert links == {"report-html": f"/api/sweeps/{sweep_id}/report.html",
                     "report-pdf": f"/api/sweeps/{sweep_id}/report.pdf",
                     "report-tex": f"/api/sweeps/{sweep_id}/table.tex"}
    for path in (links["report-html"], links["report-tex"]):
        assert api.get(path).status_code == 200
