"""Packed replicates against one model.fit per replicate, on real MNIST.

    .venv/bin/python -m bench.packed [--quick]

For each hidden width, R replicates of the study's q6 config (softmax, sparse crossentropy, Adam,
batch 32) are trained for a few epochs three ways, each in fresh processes:
(a) SingleTrainer: one model.fit per replicate, one after another (TensorFlow's default threads);
(b) SingleTrainer in two processes side by side, half the replicates each, one thread each;
(c) PackedTrainer: all replicates packed into one Keras model;
and at one width (32 where measured) a mixed pack: the same replicates with ten learning rates
and half of them stopping after half the epochs (app/packing.py), per model-epoch it trains.
Times are wall-clock from building the trainer (compiles included) to the end of the last epoch,
validation included, divided by replicates x epochs. Results go to bench/results/packed-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MARK = "BENCH-RESULT "
THREAD_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def data_dir() -> Path:
    folder = Path(os.environ.get("SWEEPLAB_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (folder / "mnist.npz").is_file():
        sys.exit(f"bench.packed: {folder / 'mnist.npz'} not found; set SWEEPLAB_DATA_DIR to the folder "
                 "holding mnist.npz (keys x_train, y_train, x_test, y_test)")
    return folder


def spec_dict(width: int, epochs: int, limit: int | None) -> dict[str, Any]:
    return {"model": {"hidden": [width], "output_activation": "softmax"},
            "loss": "sparse_categorical_crossentropy", "optimizer": {"name": "adam"},
            "epochs": epochs, "batch_size": 32,
            "limit": {"train": limit, "test": limit // 6} if limit else None}


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line after MARK."""
    from app.config import Settings
    from worker.main import configure_tensorflow

    configure_tensorflow(Settings(tf_threads=args.threads or 0))  # as a worker starts TensorFlow
    if args.child == "peak":
        print(MARK + json.dumps({"matmul_flops": matmul_peak()}), flush=True)
        return
    from app.datasets import load
    from app.spec import TrainSpec
    from worker.trainer import PreparedData

    spec = TrainSpec.model_validate(spec_dict(args.width, args.epochs, args.limit))
    images = load("mnist", data_dir())
    if spec.limit:
        images = images.limited(spec.limit.train, spec.limit.test)
    data = PreparedData.from_images(images)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.child in ("packed", "mixed"):
        from worker.keras_packed import PackedTrainer as Trainer
    else:
        from worker.keras_single import SingleTrainer as Trainer  # type: ignore[assignment]
    epochs = [args.epochs] * len(seeds)
    rates = None
    if args.child == "mixed":  # rates 1e-4 .. 1e-2; every other replicate stops after half the epochs
        rates = [float(r) for r in np.geomspace(1e-4, 1e-2, len(seeds))]
        epochs = [args.epochs if i % 2 == 0 else max(1, args.epochs // 2) for i in range(len(seeds))]
    start, cpu_start = time.time(), time.process_time()
    trainer = Trainer(spec, seeds, data, [None] * len(seeds), rates)
    marks, metrics, finals = [time.time()], {}, {}
    for epoch in range(1, args.epochs + 1):
        metrics = trainer.train_epoch(epoch, lambda: False) or {}
        marks.append(time.time())
        for i in [i for i in metrics if epochs[i] == epoch]:  # its epochs done: it leaves the pack
            finals[i] = metrics[i]["val_accuracy"]
            trainer.drop(i)
    print(MARK + json.dumps({"start": start, "marks": marks, "cpu_s": time.process_time() - cpu_start,
                             "n_train": len(data.x_train),
                             "n_test": len(data.x_test), "model_epochs": sum(epochs),
                             "val_accuracy": [finals[i] for i in sorted(finals)]}),
          flush=True)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n float32 matmul (TensorFlow, this process's threads)."""
    import tensorflow as tf

    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def launch(mode: str, width: int, seeds: list[int], args: argparse.Namespace,
           threads: int = 0) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.packed", "--child", mode, "--width", str(width),
           "--seeds", ",".join(map(str, seeds)), "--epochs", str(args.epochs)]
    cmd += ["--limit", str(args.limit)] if args.limit else []
    cmd += ["--threads", str(threads)] if threads else []
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | (THREAD_ENV if threads else {})
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode or not lines:
            sys.exit(f"bench.packed: a measurement failed (exit {proc.returncode}):\n{stderr[-3000:]}")
        out.append(json.loads(lines[-1][len(MARK):]))
    return out


def timing(results: list[dict[str, Any]], model_epochs: int) -> dict[str, Any]:
    """Wall time from the first start to the last end, over processes run side by side."""
    start = min(r["start"] for r in results)
    total = max(r["marks"][-1] for r in results) - start
    last = max(r["marks"][-1] - r["marks"][-2] for r in results)  # the last epoch, compiled
    return {"total_s": total, "per_model_epoch_s": total / model_epochs, "last_epoch_s": last,
            "build_s": max(r["marks"][0] - r["start"] for r in results),
            "cpu_per_model_epoch_s": sum(r["cpu_s"] for r in results) / model_epochs,
            "val_accuracy": [a for r in results for a in r["val_accuracy"]]}


def training_flops(width: int, n_train: int, n_test: int) -> float:
    """Multiply-adds x 2 of one model-epoch: forward, weight and input gradients, validation."""
    first, second = 784 * width, width * 10
    return n_train * 2 * (3 * first + 3 * second - first) + n_test * 2 * (first + second)


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (4 replicates, 6,000 images)")
    parser.add_argument("--widths", default=None, help="comma-separated hidden widths (default 2,32,256)")
    parser.add_argument("--replicates", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images")
    parser.add_argument("--child", choices=["single", "packed", "mixed", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    data_dir()
    custom = any(v is not None for v in (args.widths, args.replicates, args.epochs, args.limit))
    widths = [int(w) for w in (args.widths or ("2,32" if args.quick else "2,32,256")).split(",")]
    replicates = args.replicates or (4 if args.quick else 10)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.limit = args.limit or (6000 if args.quick else None)
    seeds = list(range(replicates))
    model_epochs = replicates * args.epochs
    peak = collect([launch("peak", 0, [], args)])[0]["matmul_flops"]
    print(f"dense matmul peak (2048x2048 float32, default threads): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for width in widths:
        loads = [os.getloadavg()[0]]
        a = timing(collect([launch("single", width, seeds, args)]), model_epochs)
        half = replicates // 2
        b = timing(collect([launch("single", width, seeds[:half], args, threads=1),
                            launch("single", width, seeds[half:], args, threads=1)]), model_epochs)
        packed = collect([launch("packed", width, seeds, args)])
        c = timing(packed, model_epochs)
        loads.append(os.getloadavg()[0])
        flops = training_flops(width, packed[0]["n_train"], packed[0]["n_test"])
        c["flops_per_s"] = flops / c["per_model_epoch_s"]
        c["flops_per_s_last_epoch"] = flops * replicates / c["last_epoch_s"]
        (ma, sa), (mc, sc) = mean_se(a["val_accuracy"]), mean_se(c["val_accuracy"])
        row = {"width": width, "sequential": a, "two_processes": b, "packed": c,
               "ratio_sequential_to_packed": a["per_model_epoch_s"] / c["per_model_epoch_s"],
               "ratio_two_processes_to_packed": b["per_model_epoch_s"] / c["per_model_epoch_s"],
               "packed_fraction_of_peak": c["flops_per_s"] / peak,
               "val_accuracy_agree_2se": abs(ma - mc) <= 2 * float(np.hypot(sa, sc)) + 1e-12,
               "load_average_1min": loads}
        rows.append(row)
        print(f"\nwidth {width}: seconds per model-epoch (compiles included), {replicates} replicates x "
              f"{args.epochs} epochs")
        print(f"  (a) sequential model.fit      {a['per_model_epoch_s']:.3f}")
        print(f"  (b) 2 processes x 1 thread    {b['per_model_epoch_s']:.3f}")
        print(f"  (c) packed                    {c['per_model_epoch_s']:.3f}   (last epoch alone: "
              f"{c['last_epoch_s'] / replicates:.3f}; build {c['build_s']:.2f} s)")
        print(f"  CPU seconds per model-epoch (all cores): (a) {a['cpu_per_model_epoch_s']:.3f}  (b) "
              f"{b['cpu_per_model_epoch_s']:.3f}  (c) {c['cpu_per_model_epoch_s']:.3f}")
        print(f"  (a)/(c) = {row['ratio_sequential_to_packed']:.1f}x   (b)/(c) = "
              f"{row['ratio_two_processes_to_packed']:.1f}x")
        print(f"  packed reaches {c['flops_per_s'] / 1e9:.1f} GFLOP/s ({100 * row['packed_fraction_of_peak']:.0f}% "
              f"of the matmul peak; last epoch alone {c['flops_per_s_last_epoch'] / 1e9:.1f} GFLOP/s)")
        print(f"  final val_accuracy: packed {mc:.4f} ± {sc:.4f}, sequential {ma:.4f} ± {sa:.4f} (mean ± SE) -> "
              f"{'agree' if row['val_accuracy_agree_2se'] else 'DIFFER'} within 2 SE")
        print(f"  load average (1 min) before/after: {loads[0]:.2f} / {loads[1]:.2f}")
    mixed = measure_mixed(rows, seeds, args)
    machine = {"platform": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(),
               "python": platform.python_version()}
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine, "command": sys.argv[1:],
           "replicates": replicates, "epochs": args.epochs, "limit": args.limit,
           "config": spec_dict(0, args.epochs, args.limit), "matmul_peak_flops": peak, "widths": rows,
           "mixed_pack": mixed}
    folder = REPO / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "-custom" if custom else "-quick" if args.quick else ""
    path = folder / f"packed-{dt.date.today().isoformat()}{suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten to {path.relative_to(REPO)}")


def measure_mixed(rows: list[dict[str, Any]], seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The mixed pack at width 32 (else the first width measured), against that width's uniform pack."""
    row = next((r for r in rows if r["width"] == 32), rows[0])
    results = collect([launch("mixed", row["width"], seeds, args)])
    m = timing(results, results[0]["model_epochs"])
    uniform = row["packed"]["per_model_epoch_s"]
    print(f"\nmixed pack, width {row['width']}: {len(seeds)} learning rates (1e-4 to 1e-2), half the replicates "
          f"stopping after {max(1, args.epochs // 2)} of {args.epochs} epochs: {m['per_model_epoch_s']:.3f} s per "
          f"model-epoch ({results[0]['model_epochs']} model-epochs) vs {uniform:.3f} uniform packed")
    return {"width": row["width"], "model_epochs": results[0]["model_epochs"], **m,
            "ratio_to_uniform_packed": m["per_model_epoch_s"] / uniform}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
