"""The dashboard benchmark's workers: separate processes that claim the live runs through the queue
(`claim_runs`, a real lease) and commit their epochs through the worker's write path
(`record_epoch`, fenced, with a checkpoint), then finish them (`finish_run`), as worker/runner.py
does after each epoch of a pack. Each records when each commit returned and the commit sequence
value it got, for the benchmark to match against what each page drew."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.db import get_engine, read_session
from app.models import Metric, RunStatus
from app.services.queue import Claim, WriteOutcome, claim_runs, finish_run, record_epoch
from bench.dashboard_seed import KEYS

LEASE_SECONDS = 120.0
CHECKPOINT_BYTES = 4096


@dataclass(frozen=True)
class WriterPlan:
    url: str
    index: int
    pack: int  # runs claimed at once (one pack)
    interval: float  # seconds between the pack's epochs
    seconds: float  # how long to go on, from when every writer is ready
    out: str  # where the commits go, as JSON


def commit_seq(engine: Any, run_id: int, epoch: int) -> int:
    """The commit sequence value of RUN_ID's EPOCH (the largest its rows got): the stream's cursor
    a page must reach to have drawn it."""
    with read_session(engine) as s:
        return int(s.scalar(select(func.max(Metric.seq)).where(Metric.run_id == run_id, Metric.epoch == epoch)) or 0)


def metrics_of(claim: Claim, epoch: int) -> dict[str, float]:
    acc = min(0.99, 0.1 + 0.8 * (1 - 0.7 ** epoch) + random.gauss(0, 0.003))
    val = acc - 0.01 + random.gauss(0, 0.003)
    values = dict(zip(KEYS, (2.3 * (1 - acc), acc, 2.3 * (1 - val), val), strict=True))
    return {k: values[k] for k in KEYS}


def write(plan: WriterPlan, ready: Any) -> None:
    """One writer process: claim a pack, commit one epoch of each of its runs every INTERVAL seconds
    (back to back, as a packed worker does), finish runs that reach their epochs, claim again. An
    error ends it, and is reported with what it committed."""
    engine = get_engine(plan.url)
    worker = f"bench-writer-{plan.index}-{os.getpid()}"
    commits: list[dict[str, Any]] = []
    counts = {"finished": 0, "lost": 0}
    ready.wait()  # every writer imported and connected: they start together
    cpu0 = time.process_time()
    end = time.time() + plan.seconds
    time.sleep(plan.index * plan.interval / 4)  # writers out of phase
    error = None
    try:
        run_pack(engine, plan, worker, end, commits, counts)
    except Exception as exc:  # reported in the results: the figures then say how far it got
        error = f"{type(exc).__name__}: {exc}"[:500]
    Path(plan.out).write_text(json.dumps({"worker": worker, "commits": commits, **counts,
                                          "cpu_seconds": time.process_time() - cpu0, "error": error}))


def run_pack(engine: Any, plan: WriterPlan, worker: str, end: float, commits: list[dict[str, Any]],
             counts: dict[str, int]) -> None:
    """The writer's loop until END: COMMITS and COUNTS (finished, lost) grow as it goes."""
    claims: list[Claim] = []
    next_epoch: dict[int, int] = {}
    tick = time.monotonic()
    while time.time() < end:
        if not claims:
            claims = claim_runs(engine, worker, plan.pack, LEASE_SECONDS)
            next_epoch |= {c.run_id: c.last_epoch + 1 for c in claims}
            if not claims:
                break
        for claim in list(claims):
            epoch = next_epoch[claim.run_id]
            t0 = time.time()
            outcome = record_epoch(engine, claim, epoch, metrics_of(claim, epoch), os.urandom(CHECKPOINT_BYTES),
                                   LEASE_SECONDS, plan.interval)
            t1 = time.time()
            if outcome is WriteOutcome.LOST:
                counts["lost"] += 1
                claims.remove(claim)
                continue
            commits.append({"run_id": claim.run_id, "config_id": claim.config_id, "epoch": epoch,
                            "seq": commit_seq(engine, claim.run_id, epoch), "committed_at": t1,
                            "commit_ms": round(1000 * (t1 - t0), 1)})
            next_epoch[claim.run_id] = epoch + 1
            if epoch >= claim.epochs:
                finish_run(engine, claim, RunStatus.SUCCEEDED)
                counts["finished"] += 1
                claims.remove(claim)
        tick += plan.interval
        time.sleep(max(0.0, tick - time.monotonic()))


class Writers:
    """COUNT writer processes (spawned: nothing shared with the benchmark's own engine)."""

    def __init__(self, url: str, work: Path, count: int, pack: int, interval: float, seconds: float) -> None:
        self.plans = [WriterPlan(url, i, pack, interval, seconds, str(work / f"writer-{i}.json")) for i in range(count)]
        ctx = multiprocessing.get_context("spawn")
        self.ready = ctx.Barrier(count + 1)
        self.procs = [ctx.Process(target=write, args=(p, self.ready), daemon=True) for p in self.plans]

    def start(self) -> None:
        """Start the processes and return once every one is ready (imports done), as they begin."""
        for p in self.procs:
            p.start()
        self.ready.wait(timeout=300)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def join(self) -> list[dict[str, Any]]:
        for p in self.procs:
            p.join(120)
        out = []
        for plan in self.plans:
            path = Path(plan.out)
            out.append(json.loads(path.read_text()) if path.exists() else {"commits": [], "finished": 0, "lost": 0,
                                                                           "error": "writer wrote nothing"})
        return out
