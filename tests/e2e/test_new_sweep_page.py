"""The new-sweep page in Chromium: the YAML it shows is the server's (POST /api/sweeps/validate),
an invalid form shows its spec as JSON (which YAML reads too) and submits nothing, and a submit
right after typing sends what the form says."""

from __future__ import annotations

import re
from typing import Any

import httpx
import yaml

from tests.conftest import LiveServer
from tests.e2e.chromium import BROWSER_MARKS, Page

pytestmark = BROWSER_MARKS


def _server_yaml(live_server: LiveServer, spec: dict[str, Any]) -> str:
    answer = httpx.post(f"{live_server.url}/api/sweeps/validate", json=spec).json()
    return str(answer["yaml"])


def test_the_yaml_box_is_the_server_s_yaml_of_the_form(page: Page, live_server: LiveServer) -> None:
    p = page.open("/sweeps/new")
    p.fill("#f-name", "name: with a colon")
    p.wait_for_function("() => document.getElementById('spec-yaml').value.startsWith(\"name: 'name: with\")",
                        timeout=5_000)
    shown = p.input_value("#spec-yaml")
    assert shown == _server_yaml(live_server, yaml.safe_load(shown))
    p.fill("#f-epochs", "0")
    p.locator('[data-loc="epochs"] .field-error').wait_for(state="visible", timeout=5_000)
    p.wait_for_function("() => document.getElementById('spec-yaml').value.startsWith('# Not a valid spec')",
                        timeout=5_000)
    invalid = yaml.safe_load(p.input_value("#spec-yaml"))
    assert (invalid["name"], invalid["epochs"]) == ("name: with a colon", 0)
    assert page.errors == [] or all("422" in e for e in page.errors)


def test_a_submit_right_after_typing_sends_the_form(page: Page, live_server: LiveServer) -> None:
    p = page.open("/sweeps/new")
    p.fill("#f-name", "typed just now")
    p.fill("#f-replicates", "2")
    p.click("#submit-sweep")  # before the form's check had time to run
    p.wait_for_url(re.compile(r".*/sweeps/\d+$"), wait_until="commit", timeout=10_000)
    created = httpx.get(f"{live_server.url}/api/sweeps/{p.url.rsplit('/', 1)[1]}").json()
    assert (created["name"], created["runs"]) == ("typed just now", 2)
    assert page.errors == []
