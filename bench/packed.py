"""Packed training's speed against this machine's limit, on real MNIST.

    .venv/bin/python -m bench.packed [--quick] [--baselines]

First the device (CPU model and cores, or the GPUs TensorFlow sees) and the dense float32 matmul
peak, measured in a child process with the same threads as the packed one (the best over at least 10
n x n products and 3 s, n = 2048 on a CPU, 8192 on a GPU). Then for each hidden width (2, 32, 256) R
replicates of the study's q6 config (softmax, sparse crossentropy, Adam, batch 32) train as a
PackedTrainer, in a fresh process, as a worker trains them (one pack per CPU thread or per GPU:
worker.keras_packed.pack_devices). Achieved GFLOP/s counts the matmuls a model-epoch needs
(2*m*n*k each: forward, weight gradients, input gradients except the first layer's, which
nothing needs; validation's forward on the test set), over the wall time of the last epoch
(compiled), and over the whole run too (build and compiles included); the fraction is of the
peak. At width 32 a mixed pack too: ten learning rates, half the replicates stopping after half
the epochs (app/packing.py). With --baselines, each width also trains (a) one model.fit per
replicate, one after another, and (b) in two processes of one thread each. Results go to
bench/results/packed-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.metrics import VAL_ACCURACY

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
        print(MARK + json.dumps({"matmul_flops": matmul_peak(), **device_facts()}), flush=True)
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
            finals[i] = metrics[i][VAL_ACCURACY]
            trainer.drop(i)
    packs = [(p.r, p.device) for p in trainer.packs] if hasattr(trainer, "packs") else []
    print(MARK + json.dumps({"start": start, "marks": marks, "cpu_s": time.process_time() - cpu_start,
                             "packs": packs, "n_train": len(data.x_train),
                             "n_test": len(data.x_test), "model_epochs": sum(epochs),
                             VAL_ACCURACY: [finals[i] for i in sorted(finals)]}),
          flush=True)


def device_facts() -> dict[str, Any]:
    """What this process computes on: the GPUs TensorFlow sees, else the CPU; TensorFlow's threads."""
    import tensorflow as tf

    from worker.provenance import gpu_names

    gpus = tf.config.list_physical_devices("GPU")
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = (f"GPU: {gpu_names()} ({len(gpus)})" if gpus else
            f"CPU: {cpu_name()}, {cores} cores, TensorFlow intra-op threads {threads or 'default'}")
    return {"device": name, "gpus": len(gpus), "tensorflow": tf.__version__}


def matmul_peak(n: int | None = None, repeats: int = 10, seconds: float = 3.0) -> float:
    """Best FLOP/s of an n x n float32 matmul (TensorFlow, this process's threads, its default
    device: a GPU where there is one), over at least REPEATS products and SECONDS of them: on a
    shared VM single products vary by 2x (83-127 GFLOP/s seen here within a minute, 2026-12-02), and
    the best of a longer run is the closer estimate of what the machine can do."""
    import tensorflow as tf

    n = n or (8192 if tf.config.list_physical_devices("GPU") else 2048)
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    product(a, b).numpy()
    best, count, start = float("inf"), 0, time.perf_counter()
    while count < repeats or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - t)
        count += 1
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
            VAL_ACCURACY: [a for r in results for a in r[VAL_ACCURACY]]}


def layer_products(widths: list[int]) -> list[int]:
    """in x out of each Dense layer of a 784 -> widths -> 10 network."""
    sizes = [784, *widths, 10]
    return [a * b for a, b in itertools.pairwise(sizes)]


def training_flops(widths: int | list[int], n_train: int, n_test: int) -> float:
    """Matmul FLOPs (2*m*n*k) of one model-epoch: per training image the forward product and the
    weight gradient of every layer and the input gradient of every layer but the first (nothing
    needs the images' gradient: 2x the first layer, 3x the others); per test image the forward."""
    mm = layer_products([widths] if isinstance(widths, int) else widths)
    return n_train * 2 * (2 * mm[0] + 3 * sum(mm[1:])) + n_test * 2 * sum(mm)


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a small smoke run (4 replicates, 6,000 images, widths 2 and 32)")
    parser.add_argument("--baselines", action="store_true",
                        help="also train one model.fit per replicate, in one process and in two")
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
    args.epochs = args.epochs or 2  # the last epoch runs compiled: the steady figure
    args.limit = args.limit or (6000 if args.quick else None)
    seeds = list(range(replicates))
    model_epochs = replicates * args.epochs
    facts = collect([launch("peak", 0, [], args)])[0]
    peak = facts["matmul_flops"]
    print(f"device: {facts['device']}; TensorFlow {facts['tensorflow']}; load average {os.getloadavg()[0]:.2f}")
    print(f"dense matmul peak (float32, best of 10, the packed runs' threads): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for width in widths:
        loads = [os.getloadavg()[0]]
        row: dict[str, Any] = {"width": width}
        if args.baselines:
            half = replicates // 2
            row["sequential"] = timing(collect([launch("single", width, seeds, args)]), model_epochs)
            row["two_processes"] = timing(collect([launch("single", width, seeds[:half], args, threads=1),
                                                   launch("single", width, seeds[half:], args, threads=1)]),
                                          model_epochs)
        packed = collect([launch("packed", width, seeds, args)])
        c = timing(packed, model_epochs)
        loads.append(os.getloadavg()[0])
        flops = training_flops(width, packed[0]["n_train"], packed[0]["n_test"])
        c["flops_per_model_epoch"] = flops
        c["flops_per_s"] = flops / c["per_model_epoch_s"]
        c["flops_per_s_last_epoch"] = flops * replicates / c["last_epoch_s"]
        c["packs"] = packed[0]["packs"]
        row |= {"packed": c, "packed_fraction_of_peak": c["flops_per_s_last_epoch"] / peak,
                "packed_fraction_of_peak_all": c["flops_per_s"] / peak, "load_average_1min": loads}
        rows.append(row)
        print(f"\nwidth {width}: {replicates} replicates x {args.epochs} epochs, packs (replicates, device) "
              f"{c['packs']}, {flops / 1e9:.2f} GFLOP per model-epoch")
        print(f"  packed: {c['last_epoch_s'] / replicates:.3f} s per model-epoch in the last epoch = "
              f"{c['flops_per_s_last_epoch'] / 1e9:.1f} GFLOP/s = {100 * row['packed_fraction_of_peak']:.1f}% of "
              f"the peak; {c['per_model_epoch_s']:.3f} s per model-epoch over the run (build "
              f"{c['build_s']:.2f} s and compiles included: {c['flops_per_s'] / 1e9:.1f} GFLOP/s)")
        if args.baselines:
            a, b = row["sequential"], row["two_processes"]
            row["ratio_sequential_to_packed"] = a["per_model_epoch_s"] / c["per_model_epoch_s"]
            row["ratio_two_processes_to_packed"] = b["per_model_epoch_s"] / c["per_model_epoch_s"]
            (ma, sa), (mc, sc) = mean_se(a[VAL_ACCURACY]), mean_se(c[VAL_ACCURACY])
            row["val_accuracy_agree_2se"] = abs(ma - mc) <= 2 * float(np.hypot(sa, sc)) + 1e-12
            print(f"  (a) sequential model.fit {a['per_model_epoch_s']:.3f}, (b) 2 processes x 1 thread "
                  f"{b['per_model_epoch_s']:.3f} s per model-epoch: (a)/packed "
                  f"{row['ratio_sequential_to_packed']:.1f}x, (b)/packed {row['ratio_two_processes_to_packed']:.1f}x")
            print(f"  final val_accuracy: packed {mc:.4f} ± {sc:.4f}, sequential {ma:.4f} ± {sa:.4f} (mean ± SE) "
                  f"-> {'agree' if row['val_accuracy_agree_2se'] else 'DIFFER'} within 2 SE")
        print(f"  load average (1 min) before/after: {loads[0]:.2f} / {loads[1]:.2f}")
    mixed = measure_mixed(rows, seeds, args)
    print(f"\nsummary ({facts['device']}; peak {peak / 1e9:.1f} GFLOP/s):")
    print("  width  GFLOP/s (last epoch)  fraction of peak  s per model-epoch (whole run)")
    for row in rows:
        c = row["packed"]
        print(f"  {row['width']:>5}  {c['flops_per_s_last_epoch'] / 1e9:>20.1f}  "
              f"{100 * row['packed_fraction_of_peak']:>15.1f}%  {c['per_model_epoch_s']:>29.3f}")
    machine = {"platform": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "device": facts["device"], "gpus": facts["gpus"],
               "tensorflow": facts["tensorflow"]}
    out = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine,
           "command": sys.argv[1:], "replicates": replicates, "epochs": args.epochs, "limit": args.limit,
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
