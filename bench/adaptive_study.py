"""The MNIST study fixed (presets/mnist-study.yaml) against adaptive (presets/mnist-study-adaptive.yaml)
end to end: each on a fresh SQLite database, `sweeplab worker` processes on real MNIST, until nothing has
been queued or running for a few looks (a race or a search adds work between rounds). Prints and saves
(bench/results/adaptive-study-*.json) per study: wall time, runs, model-epochs used and of the fixed
design (GET /api/sweeps' budget), and each question's answer in the study page's words.

    .venv/bin/python -m bench.adaptive_study [--workers 2] [--studies mnist-study mnist-study-adaptive]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.config import PROJECT_ROOT, Settings
from app.db import get_engine, read_session
from app.migrate import migrate
from app.models import Run, RunStatus
from app.services.presets import preset_documents
from app.services.questions import study_overview
from app.services.sweeps import create_sweep, list_sweeps, parse_spec
from bench.study import data_dir
from sweeplab.logs import configure_logging

ACTIVE = [RunStatus.QUEUED.value, RunStatus.RUNNING.value]
IDLE_LOOKS = 4  # nothing queued or running on this many looks in a row, 2 s apart: done


def run(preset: str, workers: int, train_limit: int | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"sweeplab-{preset}-"))
    settings = Settings(database_url=f"sqlite:///{work / 'study.db'}", data_dir=data_dir(),
                        artifacts_dir=work / "artifacts")
    migrate(settings.database_url)
    engine = get_engine(settings.database_url)
    docs = preset_documents(preset)
    specs = [parse_spec({**doc, "limit": {"train": train_limit}} if train_limit else doc) for doc in docs]
    for spec in specs:
        create_sweep(engine, spec, settings.max_runs_per_sweep, settings.max_attempts)
    threads = max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "SWEEPLAB_DATABASE_URL": settings.database_url, "SWEEPLAB_DATA_DIR": str(settings.data_dir),
           "SWEEPLAB_ARTIFACTS_DIR": str(settings.artifacts_dir), "SWEEPLAB_TF_THREADS": str(threads),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "worker"], env=env, cwd=PROJECT_ROOT,
                              stdout=open(work / f"worker{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(workers)]
    idle = 0
    try:
        while idle < IDLE_LOOKS:
            with read_session(engine) as s:
                left = s.scalar(select(func.count()).where(Run.status.in_(ACTIVE)))
                done = s.scalar(select(func.count()).where(Run.status.not_in(ACTIVE)))
            print(f"\r{preset}: {done} runs ended, {left} left, {time.perf_counter() - start:.0f} s", end="",
                  file=sys.stderr)
            idle = idle + 1 if not left else 0
            if all(p.poll() is not None for p in procs):
                sys.exit(f"\nevery worker exited; logs in {work}")
            time.sleep(2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    wall = time.perf_counter() - start - 2 * (IDLE_LOOKS - 1)  # the idle looks after the last run
    print(file=sys.stderr)
    sweeps = list_sweeps(engine, limit=1000)
    budgets = [s.budget for s in sweeps if s.budget is not None]
    overview = study_overview(engine, specs[0].study or preset)
    counts: dict[str, int] = {}
    for sw in sweeps:
        for status, n in sw.status_counts.model_dump().items():
            counts[status] = counts.get(status, 0) + n
    return {
        "preset": preset, "workers": workers, "tf_threads": threads, "wall_seconds": round(wall, 1),
        "runs": sum(counts.values()), "status_counts": counts,
        "model_epochs_used": sum(b.model_epochs_used for b in budgets),
        "model_epochs_fixed_design": sum(b.model_epochs_fixed_design for b in budgets),
        "sweeps": {sw.name: {"runs": sw.status_counts.total, "budget": sw.budget.model_dump() if sw.budget else None}
                   for sw in reversed(sweeps)},
        "questions": [{"ask": q["ask"], "text": q["text"]} for q in overview["questions"]],
        "folder": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--studies", nargs="+", default=["mnist-study", "mnist-study-adaptive"])
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (a quick look)")
    args = parser.parse_args()
    configure_logging()
    load = os.getloadavg()
    results = [run(name, args.workers, args.train_limit) for name in args.studies]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "load_before": load, "load_after": os.getloadavg(),
              "train_limit": args.train_limit, "results": results}
    for r in results:
        print(f"{r['preset']}: {r['wall_seconds']} s with {r['workers']} workers, {r['runs']} runs, "
              f"{r['model_epochs_used']} of {r['model_epochs_fixed_design']} model-epochs of its fixed design; "
              f"{r['status_counts']}")
        for q in r["questions"]:
            print(f"  {q['ask']}\n    {q['text']}")
    out = PROJECT_ROOT / "bench" / "results" / f"adaptive-study-{datetime.now(UTC):%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
