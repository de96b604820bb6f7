"""`sweeplab import-tensorboard LOGDIR --sweep NAME`: TensorBoard event files as external runs.

**Runs.** A run directory is one that holds event files, or whose `train/` and `validation/`
sub-folders do (what Keras' `TensorBoard` callback writes); every run directory under LOGDIR is one
run of the external sweep NAME (and study S), posted through the external-run API
(sweeplab.client), so it joins, groups and compares as any external run does.

**Epochs and keys.** Keras' callback writes `epoch_loss`, `epoch_accuracy`, ... at step 0 for the end
of the first epoch: that is sweeplab's epoch 1 (epoch = step + 1). `epoch_loss` is `loss`, the
validation folder's is `val_loss` (app.metrics.keras_key); other scalars keep their names (a
validation folder's with `val_`). Per-batch and per-iteration scalars (`batch_*`,
`*_vs_iterations`) are not epochs and are left out.

**Config and seed.** The HParams plugin's data of the run (`hp.KerasCallback` or `hp.hparams`)
when present; else the named groups of `--config-from-path REGEX` searched in the run directory's
path relative to LOGDIR (a run it does not match stops the import before anything is posted);
else `{"run": <that path>}`, a config of its own. Numbers become numbers (4.0 becomes 4), and the
value named `seed` is not part of the config but names the replicate (0 when there is none).

**Twice imports nothing twice.** Each run is created with a client token derived from the sweep,
the study and the run directory's absolute path, so a second import finds the run the first one
made: a finished one is skipped, one left running by an interrupted import gets its epochs
(stored once whatever is posted again) and is finished.

TensorBoard's reader is used without TensorFlow (its own `tensorboard.compat.notf` switch), so
the command starts in about a second.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.metrics import KEY_CHARS, keras_key
from app.statuses import ExternalEnding, RunStatus

EVENT_MARK = "tfevents"
SPLITS = {"train": False, "validation": True}  # Keras' sub-folders; True: validation
SKIPPED_PREFIXES = ("batch_",)
SKIPPED_SUFFIXES = ("_vs_iterations",)
SEED = "seed"
MAX_KEYS_PER_POST = 64  # the external-run API's keys per epoch
HOST = "tensorboard import"


class LogdirError(Exception):
    """Something about LOGDIR or the options that the user can fix (one line)."""


@dataclass
class RunDir:
    path: Path
    relpath: str
    folders: list[tuple[Path, bool]] = field(default_factory=list)  # (folder with event files, validation?)


@dataclass
class ReadRun:
    run: RunDir
    epochs: dict[int, dict[str, float]]
    hparams: dict[str, Any] | None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class ImportSummary:
    sweep_id: int | None = None
    created: int = 0
    resumed: int = 0
    skipped: list[str] = field(default_factory=list)  # relpath: why
    epochs: int = 0


def _without_tensorflow() -> None:
    """TensorBoard imports TensorFlow for its file access when it is installed (8 s here) unless
    this module exists: then it uses its own stub, which reads local files as well."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def find_runs(logdir: Path) -> list[RunDir]:
    """Every run directory under LOGDIR, sorted by path."""
    if not logdir.is_dir():
        raise LogdirError(f"{logdir}: no such directory")
    runs: dict[Path, RunDir] = {}
    folders = sorted({p.parent for p in logdir.rglob(f"*{EVENT_MARK}*") if p.is_file()})
    for folder in folders:
        split = SPLITS.get(folder.name)
        root = folder.parent if split is not None and folder != logdir else folder
        rel = root.relative_to(logdir).as_posix() if root != logdir else logdir.resolve().name
        run = runs.setdefault(root, RunDir(root, rel))
        run.folders.append((folder, bool(split)))
    return [runs[k] for k in sorted(runs)]


def _scalars(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any] | None]:
    """The folder's scalars by tag ([(step, value)]) and its HParams (None without)."""
    _without_tensorflow()
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    out: dict[str, list[tuple[int, float]]] = {}
    hparams: dict[str, Any] | None = None
    for tag in tags.get(ea.SCALARS, []):  # TF1-style summaries
        out[tag] = [(e.step, float(e.value)) for e in acc.Scalars(tag)]
    for tag in tags.get(ea.TENSORS, []):
        plugin = acc.SummaryMetadata(tag).plugin_data
        if plugin.plugin_name == "scalars":
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto).item())) for e in acc.Tensors(tag)]
        elif plugin.plugin_name == "hparams":
            data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
            if data.HasField("session_start_info"):
                hparams = {name: _hparam(v) for name, v in data.session_start_info.hparams.items()}
    return out, hparams


def _hparam(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    got = getattr(value, kind) if kind else None
    return _number(got) if isinstance(got, float) else got


def _number(value: float) -> float | int:
    return int(value) if math.isfinite(value) and value == int(value) and abs(value) < 2**53 else value


def read_run(run: RunDir) -> ReadRun:
    epochs: dict[int, dict[str, float]] = {}
    hparams: dict[str, Any] | None = None
    for folder, validation in run.folders:
        scalars, found = _scalars(folder)
        hparams = hparams or found
        for tag, points in scalars.items():
            if tag.startswith(SKIPPED_PREFIXES) or tag.endswith(SKIPPED_SUFFIXES):
                continue
            key = keras_key(tag, validation)[:KEY_CHARS]
            for step, value in points:
                epochs.setdefault(step + 1, {})[key] = value
    return ReadRun(run, dict(sorted(epochs.items())), hparams)


def path_pattern(text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise LogdirError(f"--config-from-path: not a regular expression: {exc}") from None
    if not pattern.groupindex:
        raise LogdirError("--config-from-path: name the groups, e.g. 'width=(?P<width>\\d+)/seed=(?P<seed>\\d+)'")
    return pattern


def _text_value(text: str) -> Any:
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return _number(float(number)) if kind is float else number
    return text


def settle_config(read: ReadRun, pattern: re.Pattern[str] | None) -> None:
    """READ's config and seed (see the module's "Config and seed")."""
    if read.hparams:
        values = dict(read.hparams)
    elif pattern is not None:
        m = pattern.search(read.run.relpath)
        if m is None:
            raise LogdirError(f"{read.run.relpath}: --config-from-path {pattern.pattern!r} does not match this "
                               "run directory (nothing was imported)")
        values = {k: _text_value(v) for k, v in m.groupdict().items() if v is not None}
    else:
        values = {"run": read.run.relpath}
    seed = values.pop(SEED, 0)
    if isinstance(seed, float) or not isinstance(seed, int) or seed < 0:
        raise LogdirError(f"{read.run.relpath}: the seed {seed!r} is not a whole number >= 0")
    read.config, read.seed = values, seed


def client_token(sweep: str, study: str | None, run: RunDir) -> str:
    blob = "\0".join((sweep, study or "", str(run.path.resolve())))
    return "tb-" + hashlib.sha256(blob.encode()).hexdigest()[:40]


def _wire(value: float) -> float | str:
    """JSON has no NaN or infinity: the external-run API takes them by name."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _posts(metrics: dict[str, float]) -> Iterator[dict[str, float | str]]:
    items = sorted(metrics.items())
    for i in range(0, len(items), MAX_KEYS_PER_POST):
        yield {k: _wire(v) for k, v in items[i:i + MAX_KEYS_PER_POST]}


def import_runs(client: Any, reads: list[ReadRun], sweep: str, study: str | None,
                tick: Callable[[int], None] = lambda n: None) -> ImportSummary:
    """Post READS as runs of SWEEP; TICK(epochs) after each run."""
    summary = ImportSummary()
    for read in reads:
        last = max(read.epochs, default=0)
        run = client.create_external_run(sweep, read.config, read.seed, study=study, epochs=last,
                                         client_token=client_token(sweep, study, read.run), host=HOST)
        summary.sweep_id = run["sweep_id"]
        if run["status"] != RunStatus.RUNNING:
            summary.skipped.append(f"{read.run.relpath}: already imported (run {run['id']}, {run['status']})")
            tick(0)
            continue
        if run["last_epoch"] >= 0:
            summary.resumed += 1
        else:
            summary.created += 1
        for epoch, metrics in read.epochs.items():
            for body in _posts(metrics):
                client.log_epoch(run["id"], epoch, body)
        client.finish_run(run["id"], ExternalEnding.SUCCEEDED)
        summary.epochs += len(read.epochs)
        tick(len(read.epochs))
    return summary


def import_tensorboard(client: Any, logdir: Path, sweep: str, study: str | None = None,
                       config_from_path: str | None = None, progress: bool = True) -> ImportSummary:
    """Read every run under LOGDIR, then post them (nothing is posted when a run cannot be read
    or its config not settled)."""
    from tqdm import tqdm

    pattern = path_pattern(config_from_path)
    runs = find_runs(logdir)
    if not runs:
        raise LogdirError(f"{logdir}: no TensorBoard event files (*{EVENT_MARK}*) under it")
    reads = []
    with tqdm(runs, desc="reading", unit="run", disable=not progress, file=sys.stderr) as bar:
        for run in bar:
            read = read_run(run)
            settle_config(read, pattern)
            reads.append(read)
    with tqdm(total=len(reads), desc="importing", unit="run", disable=not progress, file=sys.stderr) as bar:
        def tick(epochs: int) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{epochs} epochs", refresh=False)

        return import_runs(client, reads, sweep, study, tick)
