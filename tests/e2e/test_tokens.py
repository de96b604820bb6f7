"""SWEEPLAB_API_TOKEN: every request that changes something needs it, reads do not, it never
reaches a log; pages autoescape what users typed; without a token the server keeps to 127.0.0.1."""

from __future__ import annotations

import importlib
import pkgutil
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from app.api.mlflow import PREFIXES as MLFLOW_ROUTES
from app.config import PROJECT_ROOT, Settings
from app.errors import is_mlflow_path
from tests.conftest import (
    LiveServer,
    free_port,
    make_settings,
    settings_env,
    start_worker,
    sweeplab_command,
    wait_for,
)

# POSTs that change nothing: they may be answered without the token.
READ_ONLY_POSTS = {"/api/sweeps/validate", *(f"{prefix}/{what}/search" for prefix in MLFLOW_ROUTES
                                             for what in ("experiments", "runs"))}
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def token() -> str:
    return f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def token_settings(database_url: str, data_dir: Path, tmp_path: Path, token: str) -> Settings:
    return make_settings(database_url, data_dir, tmp_path / "artifacts", api_token=token)


@pytest.fixture
def guarded_server(token_settings: Settings, engine: Engine, tmp_path: Path) -> LiveServer:
    server = LiveServer(token_settings, tmp_path / "server.log").start()
    yield server  # type: ignore[misc]
    server.stop()


def mutations() -> list[tuple[str, str]]:
    """(method, path) of every route that may change something: each router of app.api, and the
    pages' (their forms post too)."""
    import app.api
    from app import pages

    routers = [pages.router]
    for module in pkgutil.iter_modules(app.api.__path__):
        routers.append(getattr(importlib.import_module(f"app.api.{module.name}"), "router", None))
    out = []
    for router in routers:
        for route in getattr(router, "routes", []):
            if isinstance(route, APIRoute):
                for method in sorted(route.methods - {"GET", "HEAD", "OPTIONS"}):
                    # {rest:path}: MLflow's endpoints sweeplab does not implement, refused whatever is sent
                    if route.path not in READ_ONLY_POSTS and "{rest:path}" not in route.path:
                        out.append((method, route.path))
    return out


def concrete(path: str, sweep_id: int, run_id: int) -> str:
    path = path.replace("{sweep_id}", str(sweep_id)).replace("{run_id}", str(run_id))
    return re.sub(r"\{name\}", "quick-look", re.sub(r"\{[a-z_]+_id\}", "1", path))


SPEC = {"name": "tokens", "epochs": 1, "replicates": 1}


def test_every_change_needs_the_token_and_reads_do_not(guarded_server: LiveServer, token_settings: Settings,
                                                       token: str) -> None:
    url = guarded_server.url
    good = {"authorization": f"Bearer {token}"}
    assert httpx.post(f"{url}/api/sweeps", json=SPEC, timeout=10).status_code == 401
    created = httpx.post(f"{url}/api/sweeps", json=SPEC, headers=good, timeout=10)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    run_id = httpx.get(f"{url}/api/sweeps/{sweep_id}/runs", timeout=10).json()[0]["id"]
    routes = mutations()
    assert ("POST", "/api/sweeps") in routes and ("POST", "/api/runs/{run_id}/cancel") in routes
    with httpx.Client(timeout=10) as client:  # one client for the ~200 requests: building one costs more than a 401
        for method, path in routes:
            target = f"{url}{concrete(path, sweep_id, run_id)}"
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {token}x"},
                            {"authorization": token}, {"x-sweeplab-token": "wrong"}):
                answer = client.request(method, target, json=SPEC, headers=headers)
                assert answer.status_code == 401, f"{method} {path} with {headers}: {answer.status_code}"
                if is_mlflow_path(path):  # MLflow's routes answer in MLflow's error shape
                    assert answer.json()["error_code"] == "UNAUTHENTICATED"
                else:
                    assert answer.json()["error"]["code"] == "unauthorized"
            answer = client.request(method, target, json=SPEC, headers=good)
            assert answer.status_code != 401, f"{method} {path}: the right token was refused"
    for path in ("/api/sweeps", f"/api/sweeps/{sweep_id}", f"/api/sweeps/{sweep_id}/runs", f"/api/runs/{run_id}",
                 f"/api/runs/{run_id}/metrics", "/api/health", "/openapi.json", "/", f"/sweeps/{sweep_id}",
                 f"/runs/{run_id}"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    page = httpx.get(f"{url}/", timeout=10).text
    assert 'data-token-required="true"' in page, "the pages must know to ask for the token"


def test_tokens_never_reach_the_logs(guarded_server: LiveServer, token_settings: Settings, token: str,
                                     tmp_path: Path) -> None:
    url = guarded_server.url
    wrong = f"wrong-{uuid.uuid4().hex}"
    httpx.post(f"{url}/api/sweeps", json=SPEC, headers={"authorization": f"Bearer {wrong}"}, timeout=10)
    httpx.post(f"{url}/api/sweeps", json=SPEC, headers={"x-sweeplab-token": wrong}, timeout=10)
    created = httpx.post(f"{url}/api/sweeps", json={**SPEC, "epochs": 2},
                         headers={"authorization": f"Bearer {token}"}, timeout=10)
    sweep_id = created.json()["id"]
    worker = start_worker(token_settings, tmp_path / "worker.log", "--once")  # the token is in its environment
    assert worker.wait(60) == 0
    assert httpx.get(f"{url}/api/sweeps/{sweep_id}", timeout=10).json()["status_counts"]["succeeded"] == 1
    guarded_server.stop(signal.SIGTERM)
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert set(logs) == {"server.log", "worker.log"}
    assert "POST /api/sweeps" in logs["server.log"], "the access log should be on for this test"
    for name, text in logs.items():
        assert token not in text, f"the token is in {name}"
        assert wrong not in text, f"a presented token is in {name}"


def test_pages_escape_what_users_typed(live_server: LiveServer) -> None:
    spec = {**SPEC, "name": SCRIPT, "study": f"study {SCRIPT}", "description": SCRIPT}
    created = httpx.post(f"{live_server.url}/api/sweeps", json=spec, timeout=10)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    run_id = httpx.get(f"{live_server.url}/api/sweeps/{sweep_id}/runs", timeout=10).json()[0]["id"]
    for path in ("/", f"/sweeps/{sweep_id}", f"/runs/{run_id}"):
        page = httpx.get(f"{live_server.url}{path}", timeout=10)
        assert page.status_code == 200, path
        assert SCRIPT not in page.text, f"{path} renders the user's <script> unescaped"
        if path != f"/runs/{run_id}":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, f"{path} does not show the name"


def _outside_address() -> str | None:
    """An address of this machine other than loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the kernel picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("command", ["serve", "up"])
def test_without_a_token_the_server_keeps_to_loopback_and_says_so(command: str, settings: Settings,
                                                                  engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / f"{command}.log"
    args = ["--port", str(port)] + (["--workers", "0"] if command == "up" else [])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(sweeplab_command(command, *args), cwd=PROJECT_ROOT, env=settings_env(settings),
                                stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: _reachable("127.0.0.1", port), 30, 0.2, "the server on 127.0.0.1")
        outside = _outside_address()
        if outside is not None:
            assert not _reachable(outside, port), f"reachable on {outside} without a token"
        wait_for(lambda: "127.0.0.1 only" in log_path.read_text(errors="replace"), 10, 0.2, "the start message")
        assert "no SWEEPLAB_API_TOKEN set" in log_path.read_text(errors="replace")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_serving_other_hosts_without_a_token_warns(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(sweeplab_command("serve", "--host", "0.0.0.0", "--port", str(port)),
                                cwd=PROJECT_ROOT, env=settings_env(settings), stdout=log, stderr=log)
    try:
        wait_for(lambda: "anyone who reaches this port" in log_path.read_text(errors="replace"), 30, 0.2,
                 "the warning")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
