"""docker-compose.yml and the Dockerfile, without a Docker engine: Debian's `docker-compose config`
parses and resolves the file, and every service's command runs here as a plain process."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import PROJECT_ROOT
from sweeplab.cli import build_parser
from tests.conftest import free_port, healthy, sweeplab_command, wait_for

COMPOSE = shutil.which("docker-compose")
SUBCOMMANDS = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    done = subprocess.run([COMPOSE, "-f", "docker-compose.yml", "config"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_services_volumes_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"web", "worker", "postgres", "migrate", "local"} <= set(services)
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith("/var/lib/postgresql/data:rw") for v in pg["volumes"]), "PostgreSQL's data on a volume"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Scalable: a worker publishes no port and has no fixed container name.
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]
    # Web and workers share the data volume (datasets; artifacts travel through the database).
    assert services["web"]["volumes"] == services["worker"]["volumes"] == ["sweeplab-data:/data:rw"]
    assert set(compose["volumes"]) == {"pgdata", "sweeplab-data"}
    # The dashboard is published on the host's loopback only unless someone decides otherwise.
    assert all(p.startswith("127.0.0.1:") for p in services["web"]["ports"] + services["local"]["ports"])
    local = services["local"]
    assert local["profiles"] == ["sqlite"] and local["environment"]["SWEEPLAB_DATABASE_URL"].startswith("sqlite:")
    for name in ("web", "worker", "migrate"):
        assert services[name]["environment"]["SWEEPLAB_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    from app.config import Settings

    known = {f"SWEEPLAB_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("SWEEPLAB_"):
                assert key in known, f"{name}: {key} is no setting"


def test_dockerfile() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install [^\n]*\"?\.\[train,report\]", text)  # PDF reports work in the image
    assert re.search(r"apt-get install [^\n]*\bchromium\b", text)  # Debian's, at the path Settings expects
    assert 'VOLUME ["/data"]' in text
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _sweeplab_services(compose: dict[str, Any]) -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for name, service in sorted(compose["services"].items()):
        if service.get("image") == "sweeplab:latest":
            out.append((name, list(service["command"]), dict(service.get("environment", {}))))
    return out


def test_every_command_is_a_real_sweeplab_subcommand(compose: dict[str, Any]) -> None:
    services = _sweeplab_services(compose)
    assert {name for name, _, _ in services} == {"migrate", "web", "worker", "local"}
    for name, command, _ in services:
        assert command[0] == "sweeplab" and command[1] in SUBCOMMANDS, f"{name}: {command}"
        build_parser().parse_args(command[1:])  # every option exists (argparse exits 2 otherwise)
        done = subprocess.run(sweeplab_command(command[1], "--help"), cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "usage: sweeplab" in done.stdout, f"{name}: {done.stderr}"


def _local(command: list[str], port: int) -> list[str]:
    """The service's command with a free port on loopback instead of 8000 on every interface."""
    out = []
    for arg in command[1:]:
        out.append({"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg))
    return out


@pytest.mark.timeout(180)
def test_each_service_command_runs_as_a_plain_process(compose: dict[str, Any], database_url: str,
                                                      tmp_path: Path) -> None:
    """The compose environment, with the database and /data moved to this test's own."""
    for name, command, environment in _sweeplab_services(compose):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
        for key, value in environment.items():
            env[key] = str(value).replace("/data", str(tmp_path / name))
        if "postgresql" in env["SWEEPLAB_DATABASE_URL"]:
            env["SWEEPLAB_DATABASE_URL"] = database_url
        port = free_port()
        log = tmp_path / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(sweeplab_command(*_local(command, port)), cwd=PROJECT_ROOT, env=env, stdout=out,
                                    stderr=out, start_new_session=True)
        try:
            if command[1] == "migrate":
                assert proc.wait(60) == 0, log.read_text()
                continue
            if command[1] in ("serve", "up"):
                wait_for(lambda port=port: healthy(port), 60, 0.2, f"{name} to answer")
            else:
                wait_for(lambda log=log: "started (" in log.read_text(errors="replace"), 60, 0.2, f"{name} to start")
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises SIGTERM once it has shut down cleanly (exit status 143 in a container).
            clean = (0, -signal.SIGTERM) if command[1] == "serve" else (0,)
            assert proc.wait(30) in clean, log.read_text()
            assert command[1] != "serve" or "Application shutdown complete" in log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()
