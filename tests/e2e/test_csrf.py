"""Cross-site changes without a token (the default): a change whose Origin or Referer is another
site is refused (403), and a body of a content type the route does not take is refused (415)
before anything is parsed, so another site's page can neither submit nor cancel anything. Clients
that are not browsers send no Origin and keep working; so do the dashboard's own posts.

The last test makes the requests from headless Chromium: a page served by a second local server
(another port, another origin) posts forms and no-cors fetches to the live sweeplab server.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.errors import is_mlflow_path
from app.main import create_app
from tests.conftest import LiveServer, free_port, wait_for
from tests.e2e.test_tokens import concrete, mutations

SPEC = {"name": "csrf", "epochs": 1, "replicates": 1}
EVIL = "http://evil.example"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def sweep_count(api: TestClient) -> int:
    return len(api.get("/api/sweeps").json())


def queued(api: TestClient, sweep_id: int) -> int:
    return int(api.get(f"/api/sweeps/{sweep_id}").json()["status_counts"]["queued"])


@pytest.mark.parametrize("headers", [
    {"origin": EVIL},
    {"origin": "null"},  # sandboxed frames, file: pages, referrer-policy no-referrer
    {"origin": "http://testserver:8080"},  # same host, another port: another origin
    {"origin": "https://testserver.evil.example"},
    {"referer": f"{EVIL}/page.html"},  # an older browser that sends no Origin
    {"sec-fetch-site": "cross-site"},
    {"origin": EVIL, "referer": "http://testserver/"},  # the Origin is what counts
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_changes_from_another_site_are_refused(api: TestClient, headers: dict[str, str]) -> None:
    sweep_id = api.post("/api/sweeps", json=SPEC).json()["id"]
    run_id = api.get(f"/api/sweeps/{sweep_id}/runs").json()[0]["id"]
    n = sweep_count(api)
    for method, path in mutations():
        answer = api.request(method, concrete(path, sweep_id, run_id), json=SPEC, headers=headers)
        assert answer.status_code == 403, f"{method} {path} with {headers}: {answer.status_code}"
        if is_mlflow_path(path):  # MLflow's routes answer in MLflow's error shape
            assert answer.json()["error_code"] == "PERMISSION_DENIED"
        else:
            assert answer.json()["error"]["code"] == "cross_site"
    assert sweep_count(api) == n
    assert queued(api, sweep_id) == 1, "a cross-site post cancelled the run"
    # Reads stay open to any page (they change nothing).
    assert api.get(f"/api/sweeps/{sweep_id}", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [
    {},  # curl, the Python client, MLflow's client: no Origin, no Referer
    {"origin": "http://testserver"},
    {"origin": "http://TestServer:80"},
    {"referer": "http://testserver/sweeps/new"},
    {"origin": "http://testserver", "sec-fetch-site": "same-origin"},
    {"origin": "https://proxy.example", "x-forwarded-host": "proxy.example"},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "no-origin")
def test_same_site_and_non_browser_changes_pass(api: TestClient, headers: dict[str, str]) -> None:
    created = api.post("/api/sweeps", json=SPEC, headers=headers)
    assert created.status_code == 201, created.text
    assert api.post(f"/api/sweeps/{created.json()['id']}/cancel", headers=headers).status_code == 200
    yaml_spec = "name: yaml\nepochs: 1\nreplicates: 1\n"
    answer = api.post("/api/sweeps", content=yaml_spec, headers={**headers, "content-type": "application/yaml"})
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/html", None])
def test_a_spec_in_another_content_type_is_415_and_not_parsed(api: TestClient, content_type: str | None) -> None:
    """The body is valid JSON: what a cross-site text/plain form makes a browser send."""
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/api/sweeps", "/api/sweeps/validate"):
        answer = api.post(path, content=json.dumps(SPEC), headers=headers)
        assert answer.status_code == 415, f"{path} with {content_type}: {answer.status_code} {answer.text[:200]}"
        assert answer.json()["error"]["code"] == "unsupported_media_type"
    assert sweep_count(api) == 0


def test_json_routes_take_json_only(api: TestClient) -> None:
    body = json.dumps({"sweep": "ext", "seed": 0})
    for content_type in ("text/plain", "application/yaml", "application/x-www-form-urlencoded"):
        answer = api.post("/api/external/runs", content=body, headers={"content-type": content_type})
        assert answer.status_code == 415, content_type
    assert api.post("/api/external/runs", content=body,
                    headers={"content-type": "application/json; charset=utf-8"}).status_code == 201


def test_routes_without_a_body_refuse_form_and_text_bodies(api: TestClient) -> None:
    sweep_id = api.post("/api/sweeps", json=SPEC).json()["id"]
    for content_type, body in (("text/plain", "x"), ("application/x-www-form-urlencoded", "a=b"),
                               ("multipart/form-data; boundary=x", "--x--")):
        for path in (f"/api/sweeps/{sweep_id}/cancel", "/api/presets/quick-look"):
            answer = api.post(path, content=body, headers={"content-type": content_type})
            assert answer.status_code == 415, f"{path} {content_type}: {answer.status_code}"
    assert queued(api, sweep_id) == 1 and sweep_count(api) == 1
    # What the dashboard's buttons send (nothing), and what JSON clients send, still work.
    assert api.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 200
    assert api.post(f"/api/sweeps/{sweep_id}/retry", json={}).status_code == 200


# --------------------------------------------------------------------------------------------
# From a real browser


ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="f1"></iframe><iframe name="f2"></iframe><iframe name="f3"></iframe>
<form id="plain" method="post" enctype="text/plain" target="f1" action="{base}/api/sweeps">
  <input name='{{"name": "csrf-form", "epochs": 1, "replicates": 1, "x": "' value='"}}'>
</form>
<form id="urlenc" method="post" target="f2" action="{base}/api/sweeps">
  <input name="spec" value='{spec}'>
</form>
<form id="preset" method="post" target="f3" action="{base}/api/presets/quick-look"></form>
<script>
  for (const id of ["plain", "urlenc", "preset"]) document.getElementById(id).submit();
  const spec = {spec_js};
  Promise.allSettled([
    fetch("{base}/api/sweeps", {{method: "POST", mode: "no-cors", headers: {{"content-type": "text/plain"}},
                                 body: JSON.stringify(spec)}}),
    fetch("{base}/api/sweeps", {{method: "POST", mode: "no-cors",
                                 headers: {{"content-type": "application/x-www-form-urlencoded"}},
                                 body: "spec=" + encodeURIComponent(JSON.stringify(spec))}}),
    fetch("{base}/api/sweeps/{sweep_id}/cancel", {{method: "POST", mode: "no-cors"}}),
    fetch("{base}/api/runs/{run_id}/cancel", {{method: "POST", mode: "no-cors",
                                                headers: {{"content-type": "text/plain"}}, body: "x"}}),
  ]).then(() => {{ document.body.dataset.done = "true"; }});
</script></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Another origin: a plain HTTP server on another port serving files from a folder."""
    folder = tmp_path / "evil"
    folder.mkdir()
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                             functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", folder
    server.shutdown()
    server.server_close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_another_sites_page_in_chromium_cannot_submit_or_cancel(live_server: LiveServer,
                                                               attacker_site: tuple[str, Path]) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    base = live_server.url
    created = httpx.post(f"{base}/api/sweeps", json=SPEC, timeout=10).json()
    sweep_id = created["id"]
    run_id = httpx.get(f"{base}/api/sweeps/{sweep_id}/runs", timeout=10).json()[0]["id"]
    origin, folder = attacker_site
    spec = {"name": "csrf-fetch", "epochs": 1, "replicates": 1}
    (folder / "attack.html").write_text(ATTACK_PAGE.format(
        base=base, spec=json.dumps(spec).replace("'", "&#39;"), spec_js=json.dumps(spec), sweep_id=sweep_id,
        run_id=run_id))
    log_before = live_server.log_path.read_text(errors="replace").count('" 403 ')
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{origin}/attack.html")
            page.wait_for_selector("body[data-done=true]", timeout=20_000)
            # Every request reached the server and was refused there (not merely blocked by the browser).
            wait_for(lambda: live_server.log_path.read_text(errors="replace").count('" 403 ') - log_before >= 7,
                     10, 0.2, "seven refused cross-site posts in the server log")
            # A control: the same posts from sweeplab's own page (same origin) are accepted.
            own = browser.new_page()
            own.goto(f"{base}/sweeps/{sweep_id}")
            status = own.evaluate("""async (spec) => (await fetch("/api/sweeps", {method: "POST",
                headers: {"content-type": "application/json"}, body: JSON.stringify(spec)})).status""",
                                  {**spec, "name": "same-origin"})
            assert status == 201
        finally:
            browser.close()
    names = [s["name"] for s in httpx.get(f"{base}/api/sweeps", timeout=10).json()]
    assert sorted(names) == ["csrf", "same-origin"], names
    assert httpx.get(f"{base}/api/sweeps/{sweep_id}", timeout=10).json()["status_counts"]["queued"] == 1
    assert httpx.get(f"{base}/api/runs/{run_id}", timeout=10).json()["status"] == "queued"
