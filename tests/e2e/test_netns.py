"""Nothing assumes one host: two workers in network namespaces of their own (as if on two other
machines) reach a throwaway PostgreSQL cluster over veth links, each with its own artifact
directory, and the server serves every run's model download from the database alone.

Needs root (`ip netns`, veth) and PostgreSQL's server binaries (initdb, pg_ctl); skips otherwise.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from app.config import PROJECT_ROOT
from app.models import Run
from tests.conftest import LiveServer, free_port, make_settings, settings_env, sweeplab_command, wait_for


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns and veth links"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "ip netns is not available"
    if _pg_bin() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    if shutil.which("runuser") is None:
        return "no runuser to run initdb as the postgres user"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"


@dataclass
class Link:
    """A network namespace joined to this host by a veth pair."""

    namespace: str
    host_if: str
    host_ip: str
    ns_ip: str


@dataclass
class Cluster:
    links: list[Link]
    port: int
    data: Path

    def url(self, host: str) -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/sweeplab"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Two namespaces, and a PostgreSQL cluster that listens only on the host ends of their links."""
    tag = uuid.uuid4().hex[:6]
    subnet = random.randint(100, 250)
    links = [Link(f"sweeplab-{tag}-{i}", f"sl{tag}h{i}", f"10.{subnet}.{i}.1", f"10.{subnet}.{i}.2")
             for i in (1, 2)]
    data = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    pg = _pg_bin()
    assert pg is not None
    cluster = Cluster(links, free_port(), data)
    try:
        for link in links:
            peer = link.host_if[:-2] + "n" + link.host_if[-1]
            sh("ip", "netns", "add", link.namespace)
            sh("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", link.namespace)
            sh("ip", "addr", "add", f"{link.host_ip}/24", "dev", link.host_if)
            sh("ip", "link", "set", link.host_if, "up")
            for cmd in (["ip", "addr", "add", f"{link.ns_ip}/24", "dev", peer], ["ip", "link", "set", peer, "up"],
                        ["ip", "link", "set", "lo", "up"]):
                sh("ip", "netns", "exec", link.namespace, *cmd)
        shutil.chown(data, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        sh(*as_pg, str(pg / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")
        with open(data / "db" / "pg_hba.conf", "a") as hba:  # initdb trusts loopback only
            hba.writelines(f"host all all {link.host_ip.rsplit('.', 1)[0]}.0/24 trust\n" for link in links)
        listen = ",".join(link.host_ip for link in links)
        options = f"-c listen_addresses='{listen}' -p {cluster.port} -k {data} -c fsync=off"
        sh(*as_pg, str(pg / "pg_ctl"), "start", "-w", "-D", str(data / "db"), "-l", str(data / "pg.log"),
           "-o", options)
        sh(str(pg / "createdb"), "-h", links[0].host_ip, "-p", str(cluster.port), "-U", "postgres", "sweeplab")
        yield cluster
    finally:
        if (data / "db" / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(pg / "pg_ctl"), "stop", "-m", "fast", "-D",
                            str(data / "db")], capture_output=True)
        for link in links:
            subprocess.run(["ip", "netns", "del", link.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", link.host_if], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def in_namespace(link: Link, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", link.namespace, "python3", "-c", code],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(180)
def test_workers_on_other_hosts_need_only_the_database_url(cluster: Cluster, data_dir: Path,
                                                           tmp_path: Path) -> None:
    # The namespaces really are elsewhere: this host's loopback PostgreSQL is out of their reach.
    probe = "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=2)"
    assert in_namespace(cluster.links[0], probe).returncode != 0
    server_settings = make_settings(cluster.url(cluster.links[0].host_ip), data_dir, tmp_path / "server-artifacts",
                                    pack_size=1)
    server = LiveServer(server_settings, tmp_path / "server.log").start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for i, link in enumerate(cluster.links):
            settings = make_settings(cluster.url(link.host_ip), tmp_path / f"data-{i}", tmp_path / f"artifacts-{i}",
                                     pack_size=1)
            log = open(tmp_path / f"worker-{i}.log", "ab")
            env = settings_env(settings, SWEEPLAB_FAKE_EPOCH_SECONDS="0.1")
            workers.append(subprocess.Popen(["ip", "netns", "exec", link.namespace, *sweeplab_command("worker")],
                                            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log))
        spec = {"name": "two hosts", "epochs": 3, "replicates": 8}
        created = httpx.post(f"{server.url}/api/sweeps", json=spec, timeout=10)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]

        def done() -> bool:
            counts = httpx.get(f"{server.url}/api/sweeps/{sweep_id}", timeout=5).json()["status_counts"]
            return bool(counts["succeeded"] == 8)

        wait_for(done, 120, 0.5, "the sweep to succeed on the two namespaced workers")
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(20)
    engine = create_engine(cluster.url(cluster.links[0].host_ip))
    with engine.connect() as conn:
        trained_by = {w.split(":")[1] for w in conn.scalars(select(Run.worker_id).where(Run.sweep_id == sweep_id))}
    engine.dispose()
    assert trained_by == {str(p.pid) for p in workers}, f"runs trained by {trained_by}: not both workers"
    for i in range(2):  # the worker's own files are not needed to serve what it trained
        assert list((tmp_path / f"artifacts-{i}").glob("*.keras"))
        shutil.rmtree(tmp_path / f"artifacts-{i}")
    try:
        runs = httpx.get(f"{server.url}/api/sweeps/{sweep_id}/runs", timeout=10).json()
        for run in runs:
            model = httpx.get(f"{server.url}/api/runs/{run['id']}/artifacts/model.keras", timeout=10)
            assert model.status_code == 200
            assert model.content == b"fake model of seed %d" % run["seed"]
            assert "attachment" in model.headers["content-disposition"]
    finally:
        server.stop()
