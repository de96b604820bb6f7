"""Parallel coordinates of a sweep's configs (app.services.parcoords, GET /api/sweeps/{id}/parcoords):
an axis per varying setting with readable ticks, the mean final metric as the last axis and the
colour, computed here again from the values stored."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.metrics import KEY_CHARS
from app.services import charts
from app.services.parcoords import NOT_SET, parcoords
from tests.integration.test_charts_api import seed_sweep, study_curve

GRID = {"name": "grid", "dataset": "mnist", "epochs": 3, "replicates": 2,
        "grid": {"model.hidden": [[8, 8], [32, 16]], "optimizer.learning_rate": [0.1, 0.01, 0.001]}}
UNFINISHED = {(5, 0), (5, 1), (2, 1)}  # (position, seed) still running: config 5 has none done, config 2 one
NAN_FINAL = (3, 1)  # this run's final val_accuracy is NaN


def _curve(position: int, seed: int, epoch: int) -> dict[str, float | None]:
    values = study_curve(position, seed, epoch)
    if (position, seed) == NAN_FINAL and epoch == GRID["epochs"]:
        values["val_accuracy"] = math.nan
    return values


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_grid_sweep_has_an_axis_per_setting_and_the_mean_finals(client: TestClient, engine: Engine) -> None:
    sweep = seed_sweep(engine, GRID, curve=_curve,
                       upto=lambda pos, seed: 1 if (pos, seed) in UNFINISHED else GRID["epochs"])
    configs = charts.config_infos(engine, sweep.id)
    body = client.get(f"/api/sweeps/{sweep.id}/parcoords").json()
    assert body == parcoords(engine, sweep.id)  # the route answers the service's dict

    expected: dict[int, float] = {}  # position -> mean final val_accuracy over finished, finite replicates
    for c in configs:
        pos = c["position"]
        xs = [study_curve(pos, seed, 3)["val_accuracy"] for seed in (0, 1)
              if (pos, seed) not in UNFINISHED and (pos, seed) != NAN_FINAL]
        if xs:
            expected[pos] = sum(x for x in xs if x is not None) / len(xs)
    shown = [c for c in configs if c["position"] in expected]
    assert [c["position"] for c in configs if c["id"] in body["config_ids"]] == sorted(expected)
    assert body["config_ids"] == [c["id"] for c in shown] and body["labels"] == [c["label"] for c in shown]
    assert body["n"] == [1 if c["position"] in (2, 3) else 2 for c in shown]

    hidden, rate, final = body["dimensions"]
    assert hidden["label"] == "model.hidden" and hidden["ticktext"] == ["[8, 8]", "[32, 16]"]
    assert hidden["tickvals"] == [0, 1]
    assert [hidden["ticktext"][i] for i in hidden["values"]] == [str(c["params"]["model.hidden"]) for c in shown]

    assert rate["label"].startswith("optimizer.learning_rate") and rate["kind"] == "log10"
    assert rate["ticktext"] == ["0.001", "0.01", "0.1"]
    assert rate["tickvals"] == pytest.approx([-3, -2, -1])
    assert rate["values"] == pytest.approx([math.log10(c["params"]["optimizer.learning_rate"]) for c in shown])

    means = [expected[c["position"]] for c in shown]
    assert final["label"] == "mean final validation accuracy"
    assert final["values"] == pytest.approx(means, abs=1e-12) and body["color"] == final["values"]
    assert final["range"] == pytest.approx([min(means), max(means)])
    assert body["higher_is_better"] is True and body["metric"] == "val_accuracy"

    loss = client.get(f"/api/sweeps/{sweep.id}/parcoords", params={"metric": "val_loss"}).json()
    assert loss["higher_is_better"] is False and loss["title"] == "mean final validation loss"
    assert loss["config_ids"] == body["config_ids"]
    assert loss["n"] == [1 if c["position"] == 2 else 2 for c in shown]  # the NaN run's val_loss is finite


def test_an_external_sweep_varies_by_its_config_keys(client: TestClient) -> None:
    configs: list[dict[str, Any]] = [{"opt": {"name": "sgd"}, "lr": 0.1, "depth": 2},
                                     {"opt": {"name": "adam"}, "lr": 0.1, "depth": 2},
                                     {"opt": {"name": "adam"}, "lr": 0.5, "depth": 2, "dropout": True}]
    finals = [0.5, 0.7, 0.9]
    for config, value in zip(configs, finals, strict=True):
        run = client.post("/api/external/runs", json={"sweep": "nb", "config": config, "seed": 0}).json()
        assert client.post(f"/api/runs/{run['id']}/epochs",
                           json={"epoch": 1, "metrics": {"val_accuracy": value}}).status_code == 200
        assert client.post(f"/api/runs/{run['id']}/finish", json={"status": "succeeded"}).status_code == 200
    body = client.get(f"/api/sweeps/{run['sweep_id']}/parcoords").json()
    dims = {d["label"].split(" ")[0]: d for d in body["dimensions"]}
    assert set(dims) == {"opt.name", "lr", "dropout", "mean"}  # depth is the same everywhere: no axis
    assert dims["opt.name"]["ticktext"] == ["sgd", "adam"] and dims["opt.name"]["values"] == [0, 1, 1]
    assert dims["lr"]["kind"] == "linear" and dims["lr"]["values"] == [0.1, 0.1, 0.5]
    assert dims["dropout"]["ticktext"] == ["true", NOT_SET] and dims["dropout"]["values"] == [1, 1, 0]
    assert body["color"] == pytest.approx(finals)


def test_unknown_sweep_and_a_sweep_with_nothing_succeeded(client: TestClient, engine: Engine) -> None:
    missing = client.get("/api/sweeps/999999/parcoords")
    assert missing.status_code == 404 and missing.json()["error"]["code"]
    assert client.get("/api/sweeps/1/parcoords", params={"metric": "x" * (KEY_CHARS + 1)}).status_code == 422
    sweep = seed_sweep(engine, GRID, upto=lambda pos, seed: 1)
    body = client.get(f"/api/sweeps/{sweep.id}/parcoords").json()
    assert body["config_ids"] == [] and body["color"] == [] and body["configs"] == 6
    assert [d["values"] for d in body["dimensions"]] == [[], [], []]
    assert body["dimensions"][0]["ticktext"] == ["[8, 8]", "[32, 16]"]  # the axes stand while nothing is done
