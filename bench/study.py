"""The whole reference study (presets/mnist-study.yaml: 181 runs, 2,255 model-epochs) through the real
queue: a fresh SQLite database, `sweeplab worker` processes, real MNIST. Prints the wall time for each
worker count and the final val_accuracy per sweep; saves JSON under bench/results/.

    .venv/bin/python -m bench.study [--workers 1 2] [--pack-size N] [--train-limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from app.config import PROJECT_ROOT, Settings
from app.db import get_engine, read_session
from app.migrate import migrate
from app.models import Config, Metric, Run, Sweep
from app.services.presets import preset_documents
from app.services.sweeps import create_sweep, parse_spec
from sweeplab.logs import configure_logging


def data_dir() -> Path:
    found = Path(os.environ.get("SWEEPLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
    if not (found / "mnist.npz").is_file():
        sys.exit(f"no mnist.npz in {found}: set SWEEPLAB_DATA_DIR")
    return found


def run_study(workers: int, pack_size: int | None, train_limit: int | None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="sweeplab-study-"))
    settings = Settings(database_url=f"sqlite:///{work / 'study.db'}", data_dir=data_dir(),
                        artifacts_dir=work / "artifacts")
    migrate(settings.database_url)
    engine = get_engine(settings.database_url)
    for doc in preset_documents("mnist-study"):
        if train_limit:
            doc = {**doc, "limit": {"train": train_limit}}
        create_sweep(engine, parse_spec(doc), settings.max_runs_per_sweep, settings.max_attempts)
    threads = max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "SWEEPLAB_DATABASE_URL": settings.database_url, "SWEEPLAB_DATA_DIR": str(settings.data_dir),
           "SWEEPLAB_ARTIFACTS_DIR": str(settings.artifacts_dir), "SWEEPLAB_TF_THREADS": str(threads),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pack_size:
        env["SWEEPLAB_PACK_SIZE"] = str(pack_size)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "worker"], env=env, cwd=PROJECT_ROOT,
                              stdout=open(work / f"worker{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(workers)]
    try:
        while True:
            with read_session(engine) as s:
                left = s.scalar(select(func.count()).where(Run.status.in_(["queued", "running"])))
                done = s.scalar(select(func.count()).where(Run.status == "succeeded"))
            print(f"\r{workers} worker(s): {done} runs succeeded, {left} left, {time.perf_counter() - start:.0f} s",
                  end="", file=sys.stderr)
            if not left:
                break
            if all(p.poll() is not None for p in procs):
                sys.exit(f"\nevery worker exited; logs in {work}")
            time.sleep(2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    wall = time.perf_counter() - start
    print(file=sys.stderr)
    return {"workers": workers, "tf_threads": threads, "wall_seconds": round(wall, 1), "sweeps": _finals(engine)}


def _finals(engine: object) -> dict[str, dict[str, object]]:
    """Per sweep and config: mean and std of the final val_accuracy over replicates."""
    out: dict[str, dict[str, object]] = {}
    with read_session(engine) as s:  # type: ignore[arg-type]
        last = (select(Run.id, Run.epochs, Sweep.name, Config.label, Run.status)
                .join(Sweep, Sweep.id == Run.sweep_id).join(Config, Config.id == Run.config_id))
        rows = s.execute(last).all()
        values = dict(s.execute(select(Metric.run_id, Metric.value).join(Run, Run.id == Metric.run_id)
                                .where(Metric.key == "val_accuracy", Metric.epoch == Run.epochs)).all())
    groups: dict[tuple[str, str], list[float]] = {}
    failed = 0
    for run_id, _epochs, sweep, label, status in rows:
        failed += status != "succeeded"
        if run_id in values and values[run_id] is not None:
            groups.setdefault((sweep, label), []).append(values[run_id])
    for (sweep, label), vals in sorted(groups.items()):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.setdefault(sweep, {})[label] = {"n": len(vals), "mean": round(statistics.fmean(vals), 4),
                                            "std": round(sd, 4)}
    out["_failed_runs"] = {"n": failed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pack-size", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (a quick look)")
    args = parser.parse_args()
    configure_logging()
    results = []
    for n in args.workers:
        results.append(run_study(n, args.pack_size, args.train_limit))
        print(f"whole study, {n} worker(s): {results[-1]['wall_seconds']} s", flush=True)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "pack_size": args.pack_size, "train_limit": args.train_limit, "results": results}
    for r in results:
        print(f"whole study, {r['workers']} worker(s) x {r['tf_threads']} TF threads: {r['wall_seconds']} s "
              f"({float(r['wall_seconds']) / 60:.1f} min)")  # type: ignore[arg-type]
    for name, configs in results[-1]["sweeps"].items():  # type: ignore[union-attr]
        print(f"  {name}: " + "; ".join(f"{k} {v}" for k, v in configs.items()))
    out = PROJECT_ROOT / "bench" / "results" / f"study-{datetime.now(UTC):%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
