"""The whole reference study (presets/mnist-study.yaml: 181 runs, 2,255 model-epochs) through the real
queue: a fresh SQLite database, `sweeplab worker` processes, real MNIST. Prints the device, the wall
time for each worker count beside the arithmetic limit (the matmul FLOPs the study needs over this
machine's measured float32 matmul peak, bench.packed's measurement) and the target, where each
worker's time went (the workers' per-pack phase lines), and the final val_accuracy per sweep;
saves JSON under bench/results/.

    .venv/bin/python -m bench.study [--workers N ...] [--pack-size N] [--train-limit N]

Workers default to one per GPU TensorFlow sees, else one per CPU core, each with TensorFlow
threads = cores / workers. The artifacts folder (and with it the workers' XLA compilation cache,
worker.main.xla_cache_dir) is new for every run: compiles are part of the time measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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
from app.metrics import VAL_ACCURACY
from app.migrate import migrate
from app.models import Config, Metric, Run, RunStatus, Sweep
from app.services.presets import preset_documents
from app.services.sweeps import create_sweep, parse_spec
from bench.packed import training_flops
from sweeplab.logs import configure_logging

TARGET_SECONDS = 150.0  # issue 16: the whole study under 2.5 minutes on the 2-core machine
PHASE_LINE = re.compile(r"pack of runs .* took ([\d.]+)s: (.*)")


def data_dir() -> Path:
    found = Path(os.environ.get("SWEEPLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
    if not (found / "mnist.npz").is_file():
        sys.exit(f"no mnist.npz in {found}: set SWEEPLAB_DATA_DIR")
    return found


def study_documents(train_limit: int | None) -> list[dict[str, object]]:
    docs = preset_documents("mnist-study")
    return [{**doc, "limit": {"train": train_limit}} for doc in docs] if train_limit else docs


def study_flops(train_limit: int | None, n_train: int = 60_000, n_test: int = 10_000) -> tuple[float, int, int]:
    """Matmul FLOPs of the whole study (bench.packed.training_flops per model-epoch; per run also the
    epoch-0 evaluation of both splits and the final confusion matrix's forward on the test set),
    its runs and model-epochs."""
    n_train = min(n_train, train_limit or n_train)
    total, runs, model_epochs = 0.0, 0, 0
    for doc in study_documents(train_limit):
        replicates = int(doc.get("replicates", 1))  # type: ignore[call-overload]
        for config in parse_spec(doc).expand():
            train = config.train
            hidden = list(train.model.hidden or [])
            forward = training_flops(hidden, 0, 1)  # one image's forward
            per_run = train.epochs * training_flops(hidden, n_train, n_test) + (n_train + 2 * n_test) * forward
            total += replicates * per_run
            runs += replicates
            model_epochs += replicates * train.epochs
    return total, runs, model_epochs


def _children_cpu() -> float:
    """User + system CPU seconds of this process's ended children (the workers, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phases(folder: Path) -> dict[str, float]:
    """Seconds per phase summed over every pack of every worker (worker.runner.PhaseClock lines)."""
    out: dict[str, float] = {}
    for log_file in sorted(folder.glob("worker*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            found = PHASE_LINE.search(line)
            if found:
                out["total"] = out.get("total", 0.0) + float(found.group(1))
                for key, value in re.findall(r"(\w+)=([\d.]+)", found.group(2)):
                    out[key] = out.get(key, 0.0) + float(value)
    return {k: round(v, 1) for k, v in out.items()}


def device_and_peak() -> dict[str, object]:
    """bench.packed's peak child: the device and the float32 matmul peak with default threads."""
    out = subprocess.run([sys.executable, "-m", "bench.packed", "--child", "peak"], cwd=PROJECT_ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT ")][-1]
    facts: dict[str, object] = json.loads(line[len("BENCH-RESULT "):])
    return facts


def run_study(workers: int, pack_size: int | None, train_limit: int | None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="sweeplab-study-"))
    settings = Settings(database_url=f"sqlite:///{work / 'study.db'}", data_dir=data_dir(),
                        artifacts_dir=work / "artifacts")
    migrate(settings.database_url)
    engine = get_engine(settings.database_url)
    for doc in study_documents(train_limit):
        create_sweep(engine, parse_spec(doc), settings.max_runs_per_sweep, settings.max_attempts)
    threads = max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "SWEEPLAB_DATABASE_URL": settings.database_url, "SWEEPLAB_DATA_DIR": str(settings.data_dir),
           "SWEEPLAB_ARTIFACTS_DIR": str(settings.artifacts_dir), "SWEEPLAB_TF_THREADS": str(threads),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pack_size:
        env["SWEEPLAB_PACK_SIZE"] = str(pack_size)
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu()
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "worker"], env=env, cwd=PROJECT_ROOT,
                              stdout=open(work / f"worker{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(workers)]
    try:
        while True:
            with read_session(engine) as s:
                active = [RunStatus.QUEUED.value, RunStatus.RUNNING.value]
                left = s.scalar(select(func.count()).where(Run.status.in_(active)))
                done = s.scalar(select(func.count()).where(Run.status == RunStatus.SUCCEEDED.value))
            print(f"\r{workers} worker(s): {done} runs succeeded, {left} left, {time.perf_counter() - start:.0f} s",
                  end="", file=sys.stderr)
            if not left:
                break
            if all(p.poll() is not None for p in procs):
                sys.exit(f"\nevery worker exited; logs in {work}")
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    wall = time.perf_counter() - start
    print(file=sys.stderr)
    return {"workers": workers, "tf_threads": threads, "wall_seconds": round(wall, 1),
            "worker_cpu_seconds": round(_children_cpu() - cpu_before, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "worker_seconds_by_phase": phases(work), "logs": str(work), "sweeps": _finals(engine)}


def _finals(engine: object) -> dict[str, dict[str, object]]:
    """Per sweep and config: mean and std of the final val_accuracy over replicates."""
    out: dict[str, dict[str, object]] = {}
    with read_session(engine) as s:  # type: ignore[arg-type]
        last = (select(Run.id, Run.epochs, Sweep.name, Config.label, Run.status)
                .join(Sweep, Sweep.id == Run.sweep_id).join(Config, Config.id == Run.config_id))
        rows = s.execute(last).all()
        values = dict(s.execute(select(Metric.run_id, Metric.value).join(Run, Run.id == Metric.run_id)
                                .where(Metric.key == VAL_ACCURACY, Metric.epoch == Run.epochs)).all())
    groups: dict[tuple[str, str], list[float]] = {}
    failed = 0
    for run_id, _epochs, sweep, label, status in rows:
        failed += status != RunStatus.SUCCEEDED.value
        value = values.get(run_id)
        if value is not None:
            groups.setdefault((sweep, label), []).append(value)
    for (sweep, label), vals in sorted(groups.items()):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.setdefault(sweep, {})[label] = {"n": len(vals), "mean": round(statistics.fmean(vals), 4),
                                            "std": round(sd, 4)}
    out["_failed_runs"] = {"n": failed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts to run the study with, one after another (default: one per GPU, "
                             "else one per core)")
    parser.add_argument("--pack-size", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (a quick look)")
    args = parser.parse_args()
    configure_logging()
    facts = device_and_peak()
    peak = float(facts["matmul_flops"])  # type: ignore[arg-type]
    flops, n_runs, n_model_epochs = study_flops(args.train_limit)
    limit = flops / peak
    gpus = int(facts["gpus"])  # type: ignore[call-overload]
    workers = args.workers or [gpus or os.cpu_count() or 1]
    print(f"device: {facts['device']}; TensorFlow {facts['tensorflow']}; load average {os.getloadavg()[0]:.2f}"
          + ("" if os.getloadavg()[0] < (os.cpu_count() or 1) else " (other processes share the CPU: the "
             "peak and the times below are not this machine's alone)"), flush=True)
    print(f"the study: {n_runs} runs, {n_model_epochs} model-epochs, {flops / 1e12:.2f} TFLOP of matmuls; "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s -> arithmetic limit {limit:.1f} s", flush=True)
    results = []
    for n in workers:
        results.append(run_study(n, args.pack_size, args.train_limit))
        print(f"whole study, {n} worker(s): {results[-1]['wall_seconds']} s", flush=True)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "device": facts["device"], "tensorflow": facts["tensorflow"],
              "matmul_peak_flops": peak, "study_flops": flops, "arithmetic_limit_seconds": round(limit, 1),
              "target_seconds": TARGET_SECONDS, "pack_size": args.pack_size, "train_limit": args.train_limit,
              "results": results}
    print(f"\ndevice: {facts['device']}")
    for r in results:
        wall = float(r["wall_seconds"])  # type: ignore[arg-type]
        verdict = "met" if wall < TARGET_SECONDS else "MISSED"
        loads = r["load_average_1min"]
        partial = " (a train limit: not the whole study)" if args.train_limit else ""
        print(f"whole study, {r['workers']} worker(s) x {r['tf_threads']} TF threads: {wall:.1f} s "
              f"({wall / 60:.2f} min) vs arithmetic limit {limit:.1f} s ({limit / wall:.0%} of the peak over the "
              f"run); target {TARGET_SECONDS / 60:.1f} min: {verdict}{partial}; load average "
              f"{loads[0]} -> {loads[1]}")  # type: ignore[index]
        cpu = float(r["worker_cpu_seconds"])  # type: ignore[arg-type]
        cores = os.cpu_count() or 1
        print(f"  workers' CPU time {cpu:.0f} s" + ("" if gpus else f" = {cpu / cores:.0f} s on {cores} cores with "
              "nothing else running (process CPU time: less sensitive to other load than wall time)"))
        spent: dict[str, float] = r["worker_seconds_by_phase"]  # type: ignore[assignment]
        total = spent.get("total", 0.0) or 1.0
        print("  worker-seconds by phase: " + ", ".join(f"{k} {v:.0f} ({v / total:.0%})" for k, v in
                                                      sorted(spent.items(), key=lambda kv: -kv[1]) if k != "total")
              + f"; total {spent.get('total', 0):.0f}")
    finals: dict[str, dict[str, object]] = results[-1]["sweeps"]  # type: ignore[assignment]
    for name, configs in finals.items():
        print(f"  {name}: " + "; ".join(f"{k} {v}" for k, v in configs.items()))
    out = PROJECT_ROOT / "bench" / "results" / f"study-{datetime.now(UTC):%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
