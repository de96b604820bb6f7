"""The spec as YAML, written by the server (POST /api/sweeps/validate answers `yaml`): the text the
new-sweep page shows and submits reads back as the same spec, whatever its strings hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app

SPEC: dict[str, Any] = {"name": "widths", "epochs": 3, "replicates": 2, "model": {"hidden": [16]},
                        "grid": {"model.hidden": [[8], [16]], "optimizer.name": ["sgd", "adam"]}}


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_validate_answers_the_filled_in_spec_as_yaml_too(api: TestClient) -> None:
    answer = api.post("/api/sweeps/validate", json=SPEC).json()
    text = answer["yaml"]
    assert yaml.safe_load(text) == answer["spec"]
    assert text.startswith("name: widths\n")  # as a spec file is written
    assert "  model.hidden: [[8], [16]]\n" in text and "hidden: [16]\n" in text and "epochs: 3\n" in text
    assert "learning_rate" not in text  # each swept optimizer keeps its own default rate
    created = api.post("/api/sweeps", content=text, headers={"content-type": "application/yaml"})
    assert created.status_code == 201, created.text
    assert created.json()["runs"] == 8 and created.json()["spec"]["grid"] == SPEC["grid"]


@pytest.mark.parametrize("name", ["yes", "1.5", "a: b # c", " padded ", "- dash", "'quoted' \"both\"", "naïve ☃",
                                  "null", "[x]", "line\\nbreak", "%TAG", "@at", "`tick`", "0o17", "~"])
def test_any_name_survives_the_round_trip(api: TestClient, name: str) -> None:
    answer = api.post("/api/sweeps/validate", json={"name": name, "description": f"{name}\nsecond line"}).json()
    again = api.post("/api/sweeps/validate", content=answer["yaml"], headers={"content-type": "application/yaml"})
    assert again.status_code == 200, again.text
    assert again.json()["spec"] == answer["spec"] and again.json()["spec"]["name"] == name.strip()
