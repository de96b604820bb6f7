"""The new-sweep page's layer editor in Chromium: rows of layers of the six kinds with their fields,
grid axes over a layer's field, the server's errors at the layer's row, and a submit that queues
what the form says."""

from __future__ import annotations

import re

import httpx
import yaml

from tests.conftest import LiveServer
from tests.e2e.chromium import BROWSER_MARKS, Page

pytestmark = BROWSER_MARKS
YAML_HAS = "(text) => document.getElementById('spec-yaml').value.includes(text)"


def test_the_layer_editor_builds_model_layers_and_a_grid_over_them(page: Page, live_server: LiveServer) -> None:
    p = page.open("/sweeps/new")
    p.fill("#f-name", "cnn from the form")
    p.check('input[name="model-kind"][value="layers"]')
    first = p.locator("#layer-rows .layer-row").nth(0)  # choosing layers starts the list with a dense layer
    first.locator(".layer-kind").select_option("conv2d")
    first.locator('[data-field="filters"]').fill("4")
    first.locator('[data-field="padding"]').select_option("same")
    p.click("#add-layer")
    second = p.locator("#layer-rows .layer-row").nth(1)
    second.locator(".layer-kind").select_option("max_pooling2d")
    p.click("#add-layer")
    p.locator("#layer-rows .layer-row").nth(2).locator(".layer-kind").select_option("dropout")
    p.locator("#layer-rows .layer-row").nth(2).locator('[data-field="rate"]').fill("0.25")
    p.wait_for_function(YAML_HAS, arg="dropout: {rate: 0.25}", timeout=5_000)

    # A grid axis over the conv layer's filters: its path is offered once the layer exists.
    p.click("#add-axis")
    axis = p.locator("#grid-rows .grid-row").nth(0)
    axis.locator(".grid-path").select_option("model.layers.0.conv2d.filters")
    axis.locator(".grid-values").fill("4, 8")
    p.wait_for_function(YAML_HAS, arg="model.layers.0.conv2d.filters: [4, 8]", timeout=5_000)
    shown = yaml.safe_load(p.input_value("#spec-yaml"))
    assert shown["model"]["layers"] == [
        {"conv2d": {"filters": 4, "kernel_size": 3, "strides": 1, "padding": "same", "activation": "relu"}},
        {"max_pooling2d": {"pool_size": 2}}, {"dropout": {"rate": 0.25}}]

    # The server's error lands at its layer's row.
    first.locator('[data-field="filters"]').fill("0")
    error = p.locator('[data-loc="model.layers.0"] .field-error')
    error.wait_for(state="visible", timeout=5_000)
    assert "model.layers.0.conv2d.filters" in error.inner_text()
    first.locator('[data-field="filters"]').fill("4")
    p.wait_for_function(YAML_HAS, arg="filters: 4", timeout=5_000)

    p.click("#submit-sweep")
    p.wait_for_url(re.compile(r".*/sweeps/\d+$"), wait_until="commit", timeout=10_000)
    sweep_id = p.url.rsplit("/", 1)[1]
    runs = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/runs").json()
    filters = [r["config"]["model"]["layers"][0]["conv2d"]["filters"] for r in runs]
    assert sorted(filters) == [4, 4, 4, 8, 8, 8]  # the form's 3 replicates of each config
    assert page.errors == [] or all("422" in e for e in page.errors)


def test_a_copied_sweep_with_layers_fills_the_editor(page: Page, live_server: LiveServer) -> None:
    spec = {"name": "layers to copy", "model": {"layers": [{"conv2d": {"filters": 6}}, {"flatten": {}},
                                                           {"dense": {"units": 9, "activation": "tanh"}}]},
            "grid": {"model.layers.2.dense.units": [9, 12]}}
    created = httpx.post(f"{live_server.url}/api/sweeps", json=spec)
    assert created.status_code == 201, created.text
    p = page.open(f"/sweeps/new?from={created.json()['id']}")
    rows = p.locator("#layer-rows .layer-row")
    assert rows.count() == 3
    assert [rows.nth(i).locator(".layer-kind").input_value() for i in range(3)] == ["conv2d", "flatten", "dense"]
    assert rows.nth(0).locator('[data-field="filters"]').input_value() == "6"
    assert rows.nth(2).locator('[data-field="activation"]').input_value() == "tanh"
    assert p.locator("#grid-rows .grid-path").input_value() == "model.layers.2.dense.units"
    assert page.errors == []
