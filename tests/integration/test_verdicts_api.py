"""Verdicts, power and importance through the HTTP API: replicates with known finals are logged
through the external-run API (or a grid sweep is seeded), and the answers are checked against
scipy and statsmodels computed here; failed runs, unknown ids, bad parameters, caching."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from scipy import stats as scipy_stats
from sqlalchemy import Engine
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from app.config import Settings
from app.main import create_app
from app.metrics import KEY_CHARS
from app.services import charts
from app.services.runs import list_runs
from tests.integration.test_charts_api import seed_sweep, study_curve


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def log(client: TestClient, sweep: str, config: dict[str, Any], seed: int, final: float | str,
        status: str = "succeeded") -> int:
    """An external run (declaring no epochs, as a notebook does) logging epochs 0 and 2; FINAL at 2."""
    run = client.post("/api/external/runs", json={"sweep": sweep, "config": config, "seed": seed})
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    for epoch, acc in ((0, 0.1), (2, final)):
        loss = 1 - acc if isinstance(acc, float) else acc
        r = client.post(f"/api/runs/{rid}/epochs", json={"epoch": epoch, "metrics": {"val_accuracy": acc,
                                                                                     "val_loss": loss}})
        assert r.status_code == 200, r.text
    assert client.post(f"/api/runs/{rid}/finish", json={"status": status}).status_code == 200
    return int(run.json()["sweep_id"])


FINALS = {8: [0.91, 0.915, 0.905, 0.92], 32: [0.95, 0.952, 0.948], 128: [0.951, 0.949, 0.953, 0.95, 0.952]}


@pytest.fixture
def widths(client: TestClient) -> int:
    for width, values in FINALS.items():
        for seed, v in enumerate(values):
            sweep_id = log(client, "widths", {"width": width}, seed, v)
    log(client, "widths", {"width": 8}, 99, 0.99, status="failed")  # would be the best of width 8
    log(client, "widths", {"width": 4}, 0, 0.5)  # one replicate: too_few
    return sweep_id


def test_verdicts_count_succeeded_runs_at_their_last_epoch(client: TestClient, widths: int) -> None:
    got = client.get(f"/api/sweeps/{widths}/verdicts", params={"metric": "val_accuracy", "detect": 0.005}).json()
    best = max(FINALS, key=lambda w: np.mean(FINALS[w]))
    assert got["best"]["label"] == f"width={best}" and got["best"]["n"] == len(FINALS[best])
    assert got["best"]["mean"] == pytest.approx(np.mean(FINALS[best]))
    rows = {c["label"]: c for c in got["comparisons"]}
    assert rows["width=8"]["n"] == 4 and rows["width=8"]["mean"] == pytest.approx(np.mean(FINALS[8]))  # not the failed
    others = [w for w in FINALS if w != best]
    ps = [scipy_stats.ttest_ind(FINALS[w], FINALS[best], equal_var=False).pvalue for w in others]
    for w, p, ph in zip(others, ps, multipletests(ps, method="holm")[1], strict=True):
        row = rows[f"width={w}"]
        assert row["p"] == pytest.approx(p) and row["p_holm"] == pytest.approx(ph)
        assert row["difference"] == pytest.approx(np.mean(FINALS[w]) - np.mean(FINALS[best]))
    assert rows["width=8"]["verdict"] == "worse" and rows["width=4"]["verdict"] == "too_few"
    assert got["power"]["detect"] == 0.005 and got["power"]["replicates_needed"] >= 2
    assert got["power"]["n"] == 4  # the median of 4, 3 and 5 replicates
    # The table reads the same finals (its last epoch, though an external run declares no epochs).
    table = client.get(f"/api/sweeps/{widths}/table").json()
    finals = {c["label"]: c["final"]["val_accuracy"]["values"] for c in table["configs"]}
    assert finals["width=32"] == FINALS[32] and finals["width=8"] == FINALS[8]


def test_val_loss_is_lower_is_better_and_the_best_is_ranked_by_accuracy(client: TestClient, widths: int) -> None:
    loss = client.get(f"/api/sweeps/{widths}/verdicts", params={"metric": "val_loss"}).json()
    acc = client.get(f"/api/sweeps/{widths}/verdicts").json()
    assert loss["higher_is_better"] is False and loss["best_by"] == "val_accuracy"
    assert loss["best"]["config_id"] == acc["best"]["config_id"]
    by_loss = client.get(f"/api/sweeps/{widths}/verdicts", params={"metric": "val_loss", "best_by": "val_loss"}).json()
    assert by_loss["best_by"] == "val_loss" and by_loss["best"]["mean"] == pytest.approx(
        min(1 - np.mean(v) for v in FINALS.values()))


def test_config_verdicts_across_sweeps_name_the_sweep(client: TestClient) -> None:
    for seed, (a, b) in enumerate([(0.90, 0.95), (0.91, 0.951), (0.905, 0.949)]):
        log(client, "adam", {"opt": "adam"}, seed, b)
        log(client, "sgd", {"opt": "sgd"}, seed, a)
    configs = charts.recent_configs(client.app.state.engine)  # type: ignore[attr-defined]
    ids = ",".join(str(c["id"]) for c in configs)
    got = client.get("/api/configs/verdicts", params={"ids": ids}).json()
    assert got["best"]["label"] == 'adam · opt="adam"'
    assert [c["label"] for c in got["comparisons"]] == ['sgd · opt="sgd"']
    assert got["comparisons"][0]["verdict"] == "worse"
    assert client.get("/api/configs/verdicts", params={"ids": "999999"}).status_code == 404


def test_unknown_sweep_and_bad_parameters(client: TestClient, widths: int) -> None:
    for path in ("/api/sweeps/999999/verdicts", "/api/sweeps/999999/importance"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    for params, loc in [({"detect": 0}, "query.detect"), ({"detect": -1}, "query.detect"),
                        ({"detect": "nan"}, "query.detect"), ({"detect": "inf"}, "query.detect"),
                        ({"detect": "x"}, "query.detect"), ({"metric": ""}, "query.metric"),
                        ({"metric": "a\x00b"}, "query.metric"), ({"metric": "k" * (KEY_CHARS + 1)}, "query.metric"),
                        ({"best_by": ""}, "query.best_by")]:
        r = client.get(f"/api/sweeps/{widths}/verdicts", params=params)
        assert r.status_code == 422, (params, r.text)
        assert [f["loc"] for f in r.json()["error"]["fields"]] == [loc]
    r = client.get(f"/api/sweeps/{widths}/importance", params={"metric": "a\x00b"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "query.metric"
    assert client.get("/api/configs/verdicts", params={"ids": "x"}).status_code == 400
    # A key no run reports is no error: every config has too few finals of it.
    none = client.get(f"/api/sweeps/{widths}/verdicts", params={"metric": "test_f1"}).json()
    assert none["best"] is None and {c["verdict"] for c in none["comparisons"]} == {"too_few"}


def test_answers_are_cached_until_a_run_succeeds(client: TestClient, widths: int) -> None:
    first = client.get(f"/api/sweeps/{widths}/verdicts").json()
    assert client.get(f"/api/sweeps/{widths}/verdicts").json() == first
    imp = client.get(f"/api/sweeps/{widths}/importance").json()
    assert client.get(f"/api/sweeps/{widths}/importance").json() == imp
    log(client, "widths", {"width": 4}, 1, 0.52)  # width 4 now has two replicates
    after = client.get(f"/api/sweeps/{widths}/verdicts").json()
    width4 = next(c for c in after["comparisons"] if c["label"] == "width=4")
    assert width4["n"] == 2 and width4["verdict"] == "worse" and after != first
    assert client.get(f"/api/sweeps/{widths}/importance").json()["observations"] == imp["observations"] + 1


def test_external_importance_against_anova_lm(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for opt, base in (("adam", 0.95), ("sgd", 0.9)):
        for lr in (0.001, 0.01):
            for seed in range(3):
                v = round(float(base + (0.01 if lr == 0.01 else 0) + 0.005 * rng.standard_normal()), 6)
                sweep_id = log(client, "anova", {"optimizer": {"name": opt, "learning_rate": lr}}, seed, v)
                rows.append({"opt": opt, "lr": str(lr), "y": v})
    got = client.get(f"/api/sweeps/{sweep_id}/importance").json()
    frame = pd.DataFrame(rows)
    ref = anova_lm(ols("y ~ C(opt) + C(lr) + C(opt):C(lr)", data=frame).fit(), typ=2)
    sst = float(((frame.y - frame.y.mean()) ** 2).sum())
    facs = {f["name"]: f for f in got["factors"]}
    assert list(facs) == ["optimizer.name", "optimizer.learning_rate"]
    assert facs["optimizer.name"]["eta_squared"] == pytest.approx(ref.loc["C(opt)", "sum_sq"] / sst)
    assert facs["optimizer.learning_rate"]["F"] == pytest.approx(ref.loc["C(lr)", "F"])
    assert got["interactions"][0]["eta_squared"] == pytest.approx(ref.loc["C(opt):C(lr)", "sum_sq"] / sst)
    assert got["residual"]["eta_squared"] == pytest.approx(ref.loc["Residual", "sum_sq"] / sst)


GRID_SPEC: dict[str, Any] = {
    "name": "grid", "dataset": "mnist", "epochs": 2, "replicates": 3,
    "grid": {"model.hidden": [[8], [32]], "batch_size": [32, 64, 128]},
}


def test_a_grid_sweeps_importance_uses_its_axes(engine: Engine, client: TestClient) -> None:
    sweep = seed_sweep(engine, GRID_SPEC)
    got = client.get(f"/api/sweeps/{sweep.id}/importance").json()
    assert [f["name"] for f in got["factors"]] == ["model.hidden", "batch_size"]
    assert got["factors"][0]["levels"] == ["[32]", "[8]"] and got["factors"][1]["levels"] == ["128", "32", "64"]
    assert [i["names"] for i in got["interactions"]] == [["model.hidden", "batch_size"]]
    configs = {c["id"]: c for c in charts.config_infos(engine, sweep.id)}
    params = {i: c["params"] for i, c in configs.items()}
    rows = [{"h": str(params[r.config_id]["model.hidden"]), "b": str(params[r.config_id]["batch_size"]),
             "y": study_curve(configs[r.config_id]["position"], r.seed, 2)["val_accuracy"]}
            for r in list_runs(engine, sweep.id)]
    frame = pd.DataFrame(rows)
    ref = anova_lm(ols("y ~ C(h) + C(b) + C(h):C(b)", data=frame).fit(), typ=2)
    sst = float(((frame.y - frame.y.mean()) ** 2).sum())
    assert got["factors"][1]["eta_squared"] == pytest.approx(ref.loc["C(b)", "sum_sq"] / sst, rel=1e-6)
    assert got["observations"] == 18 and got["text"].startswith("model.hidden explains ")
