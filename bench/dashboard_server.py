"""The dashboard benchmark's server (`sweeplab serve` as a process, restarted for every cold
request) and the JSON endpoints the sweep page calls (static/sweep.js and the modules it imports),
timed cold and warm over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.config import PROJECT_ROOT
from app.metrics import PRIMARY_KEY, curve_keys
from bench.dashboard_browser import process_cpu
from bench.dashboard_seed import KEYS, Seeded


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`sweeplab serve` on URL's database, on a port of its own; `restart()` empties every cache."""

    def __init__(self, url: str, work: Path) -> None:
        self.url, self.work, self.port = url, work, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []

    def start(self) -> None:
        env = {**os.environ, "SWEEPLAB_DATABASE_URL": self.url, "SWEEPLAB_DATA_DIR": str(self.work / "datasets"),
               "SWEEPLAB_ARTIFACTS_DIR": str(self.work / "artifacts")}
        log = open(self.work / "server.log", "ab")  # the process keeps it
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "serve", "--port", str(self.port),
                                      "--no-access-log"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
        for _ in range(300):
            try:
                if httpx.get(f"{self.base}/api/health", timeout=1).status_code == 200:
                    self.starts.append(time.perf_counter() - t0)
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        sys.exit(f"server did not start: {(self.work / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def settle(self, quiet: float = 0.5, most: float = 30.0) -> float:
        """Wait until the server process has used no CPU for QUIET seconds (its start-up work, such as
        importing the statistics libraries in a thread, done); the seconds waited."""
        t0 = time.perf_counter()
        last, since = process_cpu([self.pid]), time.perf_counter()
        while time.perf_counter() - t0 < most:
            time.sleep(0.1)
            now = process_cpu([self.pid])
            if now - last > 0.01:
                last, since = now, time.perf_counter()
            elif time.perf_counter() - since >= quiet:
                break
        return time.perf_counter() - t0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    when: str  # "page load", "stream", "on demand": when the page asks for it


RUN_PAGE = 200  # rows of the runs table static/sweep.js loads at a time


def endpoints(seeded: Seeded, shown: int = 10) -> list[Endpoint]:
    """Every request the sweep page makes (static/sweep.js, bands.js, table.js, stats.js, common.js):
    on load, as it streams, and when the user asks (the runs table opened, one config's replicates,
    every replicate). A grid sweep without race or prune calls no search-progress or decisions."""
    sid, ids = seeded.sweep_id, seeded.config_ids
    keys = "&".join(f"keys={k}" for k in curve_keys(KEYS))
    metric = f"metric={PRIMARY_KEY}"
    drawn = ",".join(str(i) for i in ids[:shown])
    return [
        Endpoint("sweep page HTML", f"/sweeps/{sid}", "page load"),
        Endpoint(f"aggregates, {min(shown, len(ids))} configs drawn",
                 f"/api/sweeps/{sid}/aggregates?configs={drawn}&{keys}", "page load"),
        Endpoint("table of configs", f"/api/sweeps/{sid}/table", "page load"),
        Endpoint("verdicts", f"/api/sweeps/{sid}/verdicts?{metric}", "page load"),
        Endpoint("verdicts with a difference", f"/api/sweeps/{sid}/verdicts?{metric}&detect=0.005", "page load"),
        Endpoint("importance", f"/api/sweeps/{sid}/importance?{metric}", "page load"),
        Endpoint("parcoords", f"/api/sweeps/{sid}/parcoords?{metric}", "page load"),
        Endpoint("stream, first answer", f"/api/sweeps/{sid}/stream?cursor={seeded.cursor}", "stream"),
        Endpoint(f"aggregates, all {len(ids)} configs", f"/api/sweeps/{sid}/aggregates?{keys}", "on demand"),
        Endpoint("one more config's aggregates", f"/api/sweeps/{sid}/aggregates?configs={ids[-1]}&{keys}", "on demand"),
        Endpoint("one config's replicates", f"/api/configs/{ids[0]}/series?{keys}", "on demand"),
        Endpoint(f"runs list, first {RUN_PAGE} of {seeded.runs}", f"/api/sweeps/{sid}/runs?limit={RUN_PAGE}&offset=0",
                 "on demand"),
        Endpoint("single replicates of all configs (capped)", f"/api/sweeps/{sid}/series?{keys}", "on demand"),
    ]


def request(client: httpx.Client, endpoint: Endpoint) -> tuple[float, int]:
    """Seconds until the whole answer is read (for the stream: its first event) and its size."""
    t0 = time.perf_counter()
    if endpoint.when == "stream":
        with client.stream("GET", endpoint.path) as r:
            r.raise_for_status()
            size = 0
            for line in r.iter_lines():
                size += len(line)
                if line.startswith("event:"):
                    break
        return time.perf_counter() - t0, size
    r = client.get(endpoint.path)
    r.raise_for_status()
    return time.perf_counter() - t0, len(r.content)


def time_cold(server: Server, eps: list[Endpoint]) -> dict[str, float]:
    """Each endpoint's first request after a fresh server start (every process cache empty), once the
    server has settled (its start-up imports done: the page's visit right after a restart measures
    what a request meets before that)."""
    out = {}
    for ep in eps:
        server.restart()
        server.settle()
        with httpx.Client(base_url=server.base, timeout=120) as client:
            out[ep.name] = ms(request(client, ep)[0])
    return out


def time_after(server: Server, eps: list[Endpoint], change: Callable[[], Any]) -> dict[str, float]:
    """Each endpoint's first request after CHANGE() committed (the server warm before it)."""
    out = {}
    with httpx.Client(base_url=server.base, timeout=120) as client:
        for ep in eps:
            request(client, ep)
            change()
            out[ep.name] = ms(request(client, ep)[0])
    return out


def time_warm(server: Server, eps: list[Endpoint], repeats: int) -> dict[str, dict[str, float]]:
    """Median and max of REPEATS requests of each endpoint once it has answered, and its size."""
    out = {}
    with httpx.Client(base_url=server.base, timeout=120) as client:
        for ep in eps:
            _, size = request(client, ep)
            times = [request(client, ep)[0] for _ in range(repeats)]
            out[ep.name] = {"median_ms": ms(statistics.median(times)), "max_ms": ms(max(times)),
                            "kb": round(size / 1024, 1)}
    return out


class StreamClients:
    """COUNT clients reading the sweep's event stream as a page's EventSource does (from CURSOR, in
    one asyncio loop on a thread of its own): when each epochs event arrived, with its cursor. What
    the server does for many open pages, without any browser drawing them."""

    def __init__(self, base: str, sweep_id: int, cursor: int, count: int) -> None:
        self.path = f"/api/sweeps/{sweep_id}/stream?cursor={cursor}"
        self.base, self.count = base, count
        self.received: list[list[tuple[int, float]]] = [[] for _ in range(count)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._all())

    async def _all(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=None,
                                     limits=httpx.Limits(max_connections=self.count + 1)) as client:
            tasks = [asyncio.create_task(self._one(client, i)) for i in range(self.count)]
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        try:
            async with client.stream("GET", self.path) as r:
                event = ""
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "epochs":
                        self.received[i].append((int(json.loads(line[5:])["cursor"]), 1000 * time.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported, not fatal: the figure then shows what arrived
            self.errors.append(f"{type(exc).__name__}: {exc}")
