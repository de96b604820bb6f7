"""SQLite under load: 4 workers (fake trainer, packs of 4) write epochs while a client drives the
API at a fixed rate (50 requests/s for 60 s by default: reads of lists, sweeps, runs, metrics,
charts and pages, plus submissions and cancels that write). Counts "database is locked" reaching a
client or failing a run (it must be 0), reports p50/p99 latency, prints a summary and saves JSON
under bench/results/.

    .venv/bin/python -m bench.sqlite_load [--seconds 60] [--rate 50] [--workers 4] [--epoch-seconds 0.5]

The client is open-loop (request i leaves at i/rate whatever the answers' latency), so once the
machine's CPU is saturated (e.g. --epoch-seconds 0.05 on 2 cores) requests queue up and the tail
grows with the run's length: the figures are then about CPU, not about SQLite's lock.

Exits 1 when a client saw "database is locked" or a 5xx, or a run failed because of a lock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select

from app.config import PROJECT_ROOT
from app.db import get_engine
from app.metrics import LOSS
from app.migrate import migrate
from app.models import Metric, Run, RunStatus
from app.services.sweeps import create_sweep, parse_spec
from sweeplab.logs import configure_logging

LOCKED = "database is locked"
RESULTS = PROJECT_ROOT / "bench" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _env(db_url: str, folder: Path, epoch_seconds: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPLAB_")}
    env.update({
        "SWEEPLAB_DATABASE_URL": db_url, "SWEEPLAB_TRAINER": "fake", "SWEEPLAB_FAKE_EPOCH_SECONDS": str(epoch_seconds),
        "SWEEPLAB_DATA_DIR": str(folder / "datasets"), "SWEEPLAB_ARTIFACTS_DIR": str(folder / "artifacts"),
        "SWEEPLAB_PACK_SIZE": "4", "SWEEPLAB_LEASE_SECONDS": "30", "SWEEPLAB_HEARTBEAT_SECONDS": "5",
        "SWEEPLAB_POLL_SECONDS": "0.2",
    })
    return env


class Client:
    """Open-loop load: request i starts at t0 + i/rate whatever the answers' latency."""

    def __init__(self, url: str, sweep_ids: list[int], run_ids: list[int]):
        self.url, self.sweep_ids, self.run_ids = url, sweep_ids, run_ids
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.timeline: list[tuple[float, float]] = []  # (seconds since start, latency ms)
        self.t0 = time.perf_counter()
        self.statuses: Counter[str] = Counter()
        self.locked = 0
        self.errors: Counter[str] = Counter()
        self.rng = random.Random(1)

    def pick(self) -> tuple[str, str, str, dict[str, Any] | None]:
        """(label, method, path, json body) of the next request, by weight."""
        s, r = self.rng.choice(self.sweep_ids), self.rng.choice(self.run_ids)
        choices: list[tuple[int, tuple[str, str, str, dict[str, Any] | None]]] = [
            (20, ("list sweeps", "GET", "/api/sweeps", None)),
            (15, ("read sweep", "GET", f"/api/sweeps/{s}", None)),
            (10, ("sweep runs", "GET", f"/api/sweeps/{s}/runs?limit=100", None)),
            (20, ("run metrics", "GET", f"/api/runs/{r}/metrics", None)),
            (10, ("sweep series", "GET", f"/api/sweeps/{s}/series", None)),
            (10, ("index page", "GET", "/", None)),
            (5, ("sweep page", "GET", f"/sweeps/{s}", None)),
            (5, ("submit sweep", "POST", "/api/sweeps",
                 {"name": "load", "epochs": 5, "replicates": 4, "grid": {"model.hidden": [[8], [16]]}})),
            (3, ("cancel run", "POST", f"/api/runs/{r}/cancel", None)),
            (2, ("health", "GET", "/api/health", None)),
        ]
        total = sum(w for w, _ in choices)
        x = self.rng.uniform(0, total)
        for weight, choice in choices:
            x -= weight
            if x <= 0:
                return choice
        return choices[-1][1]

    async def one(self, http: httpx.AsyncClient, label: str, method: str, path: str,
                  body: dict[str, Any] | None) -> None:
        t0 = time.perf_counter()
        try:
            answer = await http.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            self.errors[f"{type(exc).__name__} ({label})"] += 1
            return
        self.latency[label].append((time.perf_counter() - t0) * 1000)
        self.timeline.append((t0 - self.t0, self.latency[label][-1]))
        self.statuses[str(answer.status_code)] += 1
        if LOCKED in answer.text:
            self.locked += 1
        if label == "submit sweep" and answer.status_code == 201:
            self.sweep_ids.append(answer.json()["id"])

    async def drive(self, rate: float, seconds: float) -> float:
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so a request never races
        # the server closing the connection it was sent on (a ReadError that is nobody's fault).
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            tasks = []
            t0 = self.t0 = time.perf_counter()
            for i in range(int(rate * seconds)):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.one(http, *self.pick())))
            await asyncio.gather(*tasks)
            return time.perf_counter() - t0


def _windows(timeline: list[tuple[float, float]], width: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for at, ms in timeline:
        out[int(at // width)].append(ms)
    return out


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "system": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def run(seconds: float, rate: float, workers: int, epoch_seconds: float, out: Path | None) -> dict[str, Any]:
    machine = _machine()  # before we add load of our own
    folder = Path(tempfile.mkdtemp(prefix="sweeplab-load-"))
    db_url = f"sqlite:///{folder / 'sweeplab.db'}"
    migrate(db_url)
    engine = get_engine(db_url)
    # Plenty of queued work, so every worker writes epochs for the whole measurement.
    big = create_sweep(engine, parse_spec({"name": "load base", "epochs": 50, "replicates": 50,
                                           "grid": {"model.hidden": [[w] for w in range(8, 168, 8)]}}),
                       100_000, 3)
    (folder / "datasets").mkdir()
    tiny = np.zeros((10, 28, 28), dtype=np.uint8)  # the fake trainer reads nothing; submissions check it is there
    np.savez(folder / "datasets" / "mnist.npz", x_train=tiny, y_train=np.arange(10), x_test=tiny, y_test=np.arange(10))
    env = _env(db_url, folder, epoch_seconds)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logs = [open(folder / f"{name}.log", "ab") for name in ["server", *[f"worker-{i}" for i in range(workers)]]]
    exe = [sys.executable, "-m", "sweeplab.cli"]
    procs = [subprocess.Popen([*exe, "serve", "--port", str(port), "--no-access-log"], cwd=PROJECT_ROOT, env=env,
                              stdout=logs[0], stderr=logs[0])]
    procs += [subprocess.Popen([*exe, "worker"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
              for log in logs[1:]]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(folder / 'server.log').read_text()[-1000:]}")
            time.sleep(0.2)
        time.sleep(3)  # the workers claim their first packs
        with engine.connect() as conn:
            run_ids = list(conn.scalars(select(Run.id).where(Run.sweep_id == big.id).order_by(Run.id).limit(400)))
            epochs_before = conn.scalar(select(func.count()).where(Metric.key == LOSS)) or 0
        client = Client(url, [big.id], run_ids)
        elapsed = asyncio.run(client.drive(rate, seconds))
        with engine.connect() as conn:
            epochs_after = conn.scalar(select(func.count()).where(Metric.key == LOSS)) or 0
            locked_runs = conn.scalar(select(func.count()).where(Run.status == RunStatus.FAILED,
                                                                 Run.error.like("%locked%")))
            failed_runs = conn.scalar(select(func.count()).where(Run.status == RunStatus.FAILED))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
    log_text = {p.name: p.read_text(errors="replace") for p in folder.glob("*.log")}
    everything = [v for values in client.latency.values() for v in values]
    sent = int(rate * seconds)
    result = {
        "benchmark": "sqlite_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "params": {"seconds": seconds, "rate": rate, "workers": workers, "pack_size": 4,
                   "fake_epoch_seconds": epoch_seconds},
        "requests": {"sent": sent, "answered": len(everything), "elapsed_s": round(elapsed, 2),
                     "achieved_rate": round(len(everything) / elapsed, 1), "by_status": dict(client.statuses),
                     "transport_errors": dict(client.errors)},
        "latency_ms": {"p50": round(_percentile(everything, 50), 1), "p90": round(_percentile(everything, 90), 1),
                       "p99": round(_percentile(everything, 99), 1), "max": round(max(everything, default=0), 1)},
        "latency_ms_by_request": {k: {"n": len(v), "p50": round(_percentile(v, 50), 1),
                                      "p99": round(_percentile(v, 99), 1)} for k, v in sorted(client.latency.items())},
        "latency_ms_by_5s": [{"from_s": w * 5, "p50": round(_percentile(v, 50), 1), "p99": round(_percentile(v, 99), 1)}
                             for w, v in sorted(_windows(client.timeline, 5).items())],
        "epochs_written": epochs_after - epochs_before,
        "epochs_written_per_s": round((epochs_after - epochs_before) / elapsed, 1),
        "locked_in_responses": client.locked,
        "locked_in_logs": sum(text.count(LOCKED) for text in log_text.values()),
        "runs_failed": failed_runs,
        "runs_failed_locked": locked_runs,
        "server_5xx": sum(n for status, n in client.statuses.items() if status.startswith("5")),
    }
    result["ok"] = (result["locked_in_responses"] == 0 and result["runs_failed_locked"] == 0
                    and result["server_5xx"] == 0 and not client.errors)
    if result["ok"]:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        result["kept_for_inspection"] = str(folder)  # the database and every process's log
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"sqlite_load-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        result["saved_to"] = str(path)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sqlite_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the client drives the API")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epoch-seconds", type=float, default=0.5,
                   help="the fake trainer's time per epoch (0.5: about 28 epoch commits/s from 4 workers, "
                        "several times what Keras on MNIST gives; 0.05 saturates a 2-core machine's CPU)")
    p.add_argument("--no-save", action="store_true", help="print only; save nothing under bench/results/")
    args = p.parse_args(argv)
    configure_logging()
    r = run(args.seconds, args.rate, args.workers, args.epoch_seconds, None if args.no_save else RESULTS)
    req = r["requests"]
    print(f"SQLite under load ({r['machine']['cpus']} CPUs, load average {r['machine']['load_average_at_start'][0]} "
          f"at start, SQLite {r['machine']['sqlite']}): "
          f"{args.workers} workers wrote {r['epochs_written']} epochs ({r['epochs_written_per_s']}/s) while the API "
          f"answered {req['answered']}/{req['sent']} requests in {req['elapsed_s']} s ({req['achieved_rate']}/s)")
    lat = r["latency_ms"]
    print(f"  latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    for name, one in r["latency_ms_by_request"].items():
        print(f"    {name:<13} n={one['n']:<5} p50 {one['p50']:>7} ms  p99 {one['p99']:>7} ms")
    print("  p99 by 5 s window: " + " ".join(f"{w['p99']:.0f}" for w in r["latency_ms_by_5s"]) + " ms")
    print(f"  statuses {req['by_status']}; transport errors {req['transport_errors'] or 0}")
    print(f"  'database is locked': {r['locked_in_responses']} in answers, {r['runs_failed_locked']} failed runs, "
          f"{r['locked_in_logs']} in server/worker logs; 5xx: {r['server_5xx']}")
    if "kept_for_inspection" in r:
        print(f"  logs and database kept in {r['kept_for_inspection']}")
    if "saved_to" in r:
        print(f"  saved {os.path.relpath(r['saved_to'], Path.cwd())}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
