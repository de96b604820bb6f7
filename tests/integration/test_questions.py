"""A study's declared questions: the spec's `questions` key (validated at its field), the MNIST
preset's questions, and GET /api/studies/{study} answering them from external runs with known
finals, every number against scipy's Welch test and statsmodels' Holm correction computed here."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine
from statsmodels.stats.multitest import multipletests

from app.config import Settings
from app.main import create_app
from app.services.presets import preset_documents
from app.services.sweeps import parse_spec

CHECK_SPEC = {"name": "questions", "study": "lab", "dataset": "mnist", "epochs": 1, "replicates": 1,
              "limit": {"train": 50, "test": 20}}
# Known finals of external runs (val_accuracy; val_loss for the lower-is-better question).
SGD = [0.90, 0.91, 0.905, 0.895, 0.912]
ADAM = [0.95, 0.952, 0.948, 0.955]
SGD_LOSS = [0.30, 0.28, 0.31, 0.29, 0.305]
ADAM_LOSS = [0.20, 0.22, 0.19, 0.21]
WIDTHS = {8: [0.80, 0.82, 0.81], 16: [0.85, 0.86, 0.845, 0.855], 32: [0.856, 0.85, 0.86], 64: [0.7]}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def log_run(api: TestClient, sweep: str, config: dict[str, Any], seed: int, finals: dict[str, float],
            status: str = "succeeded", study: str = "lab") -> int:
    """An external run of CONFIG that logs an early epoch and then FINALS at its last epoch."""
    run = api.post("/api/external/runs", json={"sweep": sweep, "study": study, "config": config, "seed": seed})
    assert run.status_code == 201, run.text
    run_id: int = run.json()["id"]
    early = {k: v - 0.2 for k, v in finals.items()}
    for epoch, metrics in ((1, early), (2, finals)):
        assert api.post(f"/api/runs/{run_id}/epochs", json={"epoch": epoch, "metrics": metrics}).status_code == 200
    assert api.post(f"/api/runs/{run_id}/finish", json={"status": status}).status_code == 200
    return run_id


def welch(config: list[float], best: list[float]) -> tuple[float, float, float, float]:
    """CONFIG minus BEST: difference, 95% CI low and high (Welch-Satterthwaite df), Welch's p."""
    a, b = config, best
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    p = float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    return ma - mb, ma - mb - half, ma - mb + half, p


def names_of(question: dict[str, Any]) -> dict[int, str]:
    """How the question's answer names each of its configs (its chart's names)."""
    return {c["config_id"]: c["name"] for c in question["configs"]}


def seed_study(api: TestClient) -> None:
    for seed, (acc, loss) in enumerate(zip(SGD, SGD_LOSS, strict=True)):
        log_run(api, "sgd", {"optimizer": "sgd"}, seed, {"val_accuracy": acc, "val_loss": loss})
    for seed, (acc, loss) in enumerate(zip(ADAM, ADAM_LOSS, strict=True)):
        log_run(api, "adam", {"optimizer": "adam"}, seed, {"val_accuracy": acc, "val_loss": loss})
    for width, finals in WIDTHS.items():
        for seed, acc in enumerate(finals):
            log_run(api, "widths", {"width": width}, seed, {"val_accuracy": acc})
    log_run(api, "widths", {"width": 32}, 99, {"val_accuracy": 0.1}, status="failed")  # does not count


QUESTIONS = [
    {"ask": "Is Adam better than SGD beyond seed noise?", "compare": ["sgd", "adam"]},
    {"ask": "Which width stops helping?", "compare": ["widths"]},
    {"ask": "Does Adam lower the validation loss?", "compare": ["sgd", "adam"], "metric": "val_loss"},
    {"ask": "Against a sweep not submitted yet", "compare": ["sgd", "later sweep"]},
]


def test_questions_are_answered_with_welch_and_holm(api: TestClient) -> None:
    seed_study(api)
    created = api.post("/api/sweeps", json={**CHECK_SPEC, "questions": QUESTIONS})
    assert created.status_code == 201, created.text
    # The same question declared again by a later sweep is answered once.
    assert api.post("/api/sweeps", json={**CHECK_SPEC, "name": "again", "questions": QUESTIONS[:1]}).status_code == 201
    r = api.get("/api/studies/lab")
    assert r.status_code == 200, r.text
    study = r.json()
    assert [s["name"] for s in study["sweeps"]] == ["sgd", "adam", "widths", "questions", "again"]
    assert [s["kind"] for s in study["sweeps"]][:3] == ["external"] * 3
    assert study["runs"] == 5 + 4 + 12 + 1 + 1
    assert study["status_counts"]["succeeded"] == 20 and study["status_counts"]["failed"] == 1
    assert study["status_counts"]["queued"] == 2
    widths_sweep = study["sweeps"][2]
    assert widths_sweep["best"]["mean"] == pytest.approx(sum(WIDTHS[32]) / 3)
    adam_q, widths_q, loss_q, missing_q = study["questions"]
    assert len(study["questions"]) == 4

    # Adam vs SGD: two configs, the best is adam; SGD minus adam by Welch.
    v = adam_q["verdicts"]
    assert adam_q["sweeps"] == ["sgd", "adam"] and adam_q["missing"] == [] and adam_q["metric"] == "val_accuracy"
    name = names_of(adam_q)
    assert [c["name"] for c in adam_q["configs"]] == ["sgd", "adam"]  # a one-config sweep goes by its name
    assert name[v["best"]["config_id"]] == "adam" and v["best"]["n"] == 4
    (c,) = v["comparisons"]
    diff, low, high, p = welch(SGD, ADAM)
    assert name[c["config_id"]] == "sgd" and c["n"] == 5 and c["verdict"] == "worse"
    assert c["difference"] == pytest.approx(diff) and c["ci"] == pytest.approx([low, high])
    assert c["p"] == pytest.approx(p, rel=1e-9) and c["p_holm"] == pytest.approx(p, rel=1e-9)
    points, half = 100 * abs(diff), 100 * (high - low) / 2
    words = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    assert adam_q["text"] == f"adam is better than sgd by {points:.1f} ± {half:.1f} points, {words}; 4 vs 5 seeds."
    chart = {cfg["name"]: cfg for cfg in adam_q["configs"]}
    assert sorted(chart["sgd"]["values"]) == sorted(SGD) and chart["adam"]["n"] == 4
    lo, hi = scipy_stats.t.interval(0.95, 3, loc=sum(ADAM) / 4, scale=scipy_stats.sem(ADAM))
    assert chart["adam"]["mean"] == pytest.approx(sum(ADAM) / 4) and chart["adam"]["ci"] == pytest.approx([lo, hi])

    # Widths: one grid-like sweep, its configs against each other; Holm over the family; one
    # replicate is too few and stays out of the family; the failed run is not counted.
    w, name = widths_q["verdicts"], names_of(widths_q)
    assert name[w["best"]["config_id"]] == "width=32" and w["best"]["n"] == 3
    tested = [cmp for cmp in w["comparisons"] if cmp["verdict"] != "too_few"]
    expected = {label: welch(WIDTHS[width], WIDTHS[32]) for label, width in (("width=8", 8), ("width=16", 16))}
    holm = multipletests([expected[k][3] for k in expected], method="holm")[1]
    for (label, (d, lo_, hi_, p_)), adjusted in zip(expected.items(), holm, strict=True):
        got = next(cmp for cmp in tested if name[cmp["config_id"]] == label)
        assert got["difference"] == pytest.approx(d) and got["ci"] == pytest.approx([lo_, hi_])
        assert got["p"] == pytest.approx(p_, rel=1e-9) and got["p_holm"] == pytest.approx(adjusted, rel=1e-9)
        assert got["verdict"] == ("worse" if adjusted < 0.05 else "indistinguishable")
    verdict_of = {name[cmp["config_id"]]: cmp["verdict"] for cmp in w["comparisons"]}
    assert verdict_of["width=64"] == "too_few"
    assert widths_q["text"].startswith("Best: width=32 (")  # names within the one sweep
    assert "worse than it (adjusted p" in widths_q["text"] and "width=8" in widths_q["text"]
    assert "indistinguishable from it beyond seed noise" in widths_q["text"] and "width=16" in widths_q["text"]
    assert "too few succeeded replicates to tell: width=64" in widths_q["text"]
    assert [cfg["name"] for cfg in widths_q["configs"]] == ["width=8", "width=16", "width=32", "width=64"]
    assert widths_q["configs"][2]["n"] == 3  # the failed run of width 32 is not a replicate

    # Lower is better for val_loss: the best is the lowest mean, ranked by the question's metric.
    lv = loss_q["verdicts"]
    assert lv["higher_is_better"] is False and names_of(loss_q)[lv["best"]["config_id"]] == "adam"
    (lc,) = lv["comparisons"]
    d, lo, hi, p = welch(SGD_LOSS, ADAM_LOSS)
    assert lc["difference"] == pytest.approx(d) and lc["verdict"] == "worse" and lc["p"] == pytest.approx(p, rel=1e-9)
    assert loss_q["text"].startswith(f"adam is better than sgd by {abs(d):.{2}f} ± ")

    # A name the study lacks: said in words, no verdicts; the found sweep's configs still drawn.
    assert missing_q["missing"] == ["later sweep"] and missing_q["verdicts"] is None
    assert missing_q["text"] == "Sweep 'later sweep' not found in this study."
    assert [cfg["name"] for cfg in missing_q["configs"]] == ["sgd"]


def test_the_newest_sweep_of_a_name_answers(api: TestClient) -> None:
    for seed, acc in enumerate([0.5, 0.52, 0.51]):
        log_run(api, "a", {"x": 1}, seed, {"val_accuracy": acc})
    for seed, acc in enumerate([0.6, 0.61]):
        log_run(api, "b", {"x": 1}, seed, {"val_accuracy": acc})
    # "b" again, in a new external sweep of the same name (another dataset makes it another sweep)
    run = api.post("/api/external/runs", json={"sweep": "b", "study": "lab", "dataset": "other", "config": {"x": 2},
                                               "seed": 0}).json()
    api.post(f"/api/runs/{run['id']}/epochs", json={"epoch": 1, "metrics": {"val_accuracy": 0.7}})
    api.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"})
    assert api.post("/api/sweeps", json={**CHECK_SPEC, "questions": [{"ask": "a or b?", "compare": ["a", "b"]}]}
                    ).status_code == 201
    (q,) = api.get("/api/studies/lab").json()["questions"]
    assert q["sweep_ids"][1] == run["sweep_id"]
    assert q["verdicts"]["comparisons"][0]["verdict"] == "too_few"  # the newest "b" has one replicate
    assert q["text"] == "Too few succeeded replicates to tell: a has 3, b has 1; at least 2 each are needed."


def test_a_study_without_questions_and_unknown_studies(api: TestClient) -> None:
    log_run(api, "solo", {"x": 1}, 0, {"val_accuracy": 0.5})
    study = api.get("/api/studies/lab").json()
    assert study["questions"] == [] and [s["name"] for s in study["sweeps"]] == ["solo"]
    r = api.get("/api/studies/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and "nope" in r.json()["error"]["message"]
    r = api.get("/api/studies/a%00b")
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "path.study"
    assert api.get("/api/studies/" + "x" * 201).status_code == 422
    page = api.get("/studies/nope", headers={"accept": "text/html"})
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    page = api.get("/studies/lab", headers={"accept": "text/html"})
    assert page.status_code == 200 and "solo" in page.text and "This study declares no questions" in page.text


BAD_QUESTIONS: list[tuple[Any, str]] = [
    ("nope", "questions"),
    ([{"ask": "x"}], "questions.0.compare"),
    ([{"ask": "x", "compare": []}], "questions.0.compare"),
    ([{"ask": "x", "compare": "q1"}], "questions.0.compare"),
    ([{"ask": "x", "compare": ["a", "a"]}], "questions.0.compare"),
    ([{"ask": "x", "compare": ["a", " "]}], "questions.0.compare"),
    ([{"ask": "x", "compare": ["a"] * 21}], "questions.0.compare"),
    ([{"ask": "x", "compare": ["a" * 201]}], "questions.0.compare.0"),
    ([{"ask": "x", "compare": ["a\u0000"]}], "questions.0.compare.0"),
    ([{"ask": "  ", "compare": ["a"]}], "questions.0.ask"),
    ([{"ask": "x" * 301, "compare": ["a"]}], "questions.0.ask"),
    ([{"compare": ["a"]}], "questions.0.ask"),
    ([{"ask": "x", "compare": ["a"], "metric": ""}], "questions.0.metric"),
    ([{"ask": "x", "compare": ["a"], "why": 1}], "questions.0.why"),
    ([{"ask": "ok", "compare": ["a"]}, {"ask": "x", "compare": [3]}], "questions.1.compare.0"),
    ([{"ask": "x", "compare": ["a"]}] * 21, "questions"),
]


def test_bad_questions_are_a_422_naming_the_field(api: TestClient) -> None:
    # One app and database for every case (each setup costs a fresh database).
    for questions, field in BAD_QUESTIONS:
        for route in ("/api/sweeps/validate", "/api/sweeps"):
            r = api.post(route, json={**CHECK_SPEC, "questions": questions})
            assert r.status_code == 422, (questions, r.text)
            assert field in [f["loc"] for f in r.json()["error"]["fields"]], (questions, r.json())
    assert api.get("/api/sweeps").json() == []


def test_good_questions_are_kept_in_the_spec(api: TestClient) -> None:
    questions = [{"ask": " Is Adam better? ", "compare": [" q1 ", "q4"], "metric": "val_loss"}]
    r = api.post("/api/sweeps/validate", json={**CHECK_SPEC, "questions": questions})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["questions"] == [{"ask": "Is Adam better?", "compare": ["q1", "q4"], "metric": "val_loss"}]
    assert "questions" not in api.post("/api/sweeps/validate", json=CHECK_SPEC).json()["spec"]
    sweep = api.post("/api/sweeps", json={**CHECK_SPEC, "questions": questions}).json()
    assert sweep["spec"]["questions"][0]["compare"] == ["q1", "q4"]


def test_the_mnist_preset_declares_its_questions_over_its_own_sweeps() -> None:
    specs = [parse_spec(doc) for doc in preset_documents("mnist-study")]
    assert sum(s.run_count() for s in specs) == 181
    assert sum(len(s.seed_list()) * sum(c.train.epochs for c in s.expand()) for s in specs) == 2255
    names = {s.name for s in specs}
    questions = [q for s in specs for q in s.questions or []]
    assert [q.compare for q in questions] == [
        ["q1 replicates", "q3 lower learning rate"], ["q1 replicates", "q4 adam"],
        ["q4 adam", "q5 softmax + cross-entropy"], ["q6 hidden width"],
        ["q7a no hidden layer", "q7b two hidden layers", "q7c three hidden layers"]]
    assert all(set(q.compare) <= names for q in questions)
    assert "Is Adam better than SGD beyond seed noise?" in [q.ask for q in questions]


def test_a_study_whose_name_holds_a_slash_has_its_page_api_and_report(api: TestClient) -> None:
    """`course/week1`: the index and sweep pages link to /studies/course/week1, which answers, as do
    its JSON (with / or %2F) and its report; a longer path is not mistaken for another study."""
    log_run(api, "solo", {"x": 1}, 0, {"val_accuracy": 0.5}, study="course/week1")
    for path in ("/api/studies/course/week1", "/api/studies/course%2Fweek1"):
        r = api.get(path)
        assert r.status_code == 200, (path, r.text)
        assert [s["name"] for s in r.json()["sweeps"]] == ["solo"]
    page = api.get("/studies/course/week1", headers={"accept": "text/html"})
    assert page.status_code == 200 and "solo" in page.text
    report = api.get("/api/studies/course/week1/report.html")
    assert report.status_code == 200 and "solo" in report.text
    assert api.get("/api/studies/course").status_code == 404
    assert api.get("/api/studies/course/week1/other").status_code == 404
    index = api.get("/", headers={"accept": "text/html"})
    assert 'href="/studies/course/week1"' in index.text
