"""Replicates of one config packed into one Keras model, trained together in one XLA loop.

Replicates share their architecture, loss, optimizer and batch size (app/packing.py) and differ in
their seed and learning rate, so their Dense kernels are stacked into (R, in, out) variables and
every step runs one batched matmul for all of them. Each replicate still sees exactly what it
would alone: its own initial weights (copied from a standalone model), its own shuffle order, its
own loss with Keras' reduction (the pack minimises the sum of the R losses, so gradients stay
separate), its own learning rate (an (R,) tensor broadcast over each stacked variable: it scales
the replicate's own update) and its own optimizer slots (SGD, Adam and RMSprop update each
parameter elementwise, so updating the stacked variables is the same mathematics; the step count
is shared, as the replicates of a pack move in lock-step). A replicate whose epochs are done is
dropped (`drop`) as a cancelled one is; the others go on.

Where the time goes (2 cores, width 32, 10 replicates, Adam; one core runs one pack's loop): per
step mostly the forward and weight-gradient matmuls, then the Adam update (~10%; ~20% at width
256); Python is out of the loop (128 steps per call). Narrow kernels train transposed, which XLA's
CPU dots run faster (worker.packed_program.transposed_kernels: 1.4x at width 32, 2.4x with no
hidden layer, measured 2026-12-04). Hence one pack per core, run from parallel threads, and
compiles shared between packs of the same shape.

This module holds the trainer (PackedTrainer), its packs (_Pack) and where they run (accelerators,
pack_devices, pack_count); the stored inputs are worker.packed_inputs', the stacked layers
worker.packed_layers', the compiled loops worker.packed_program', all re-exported here. The device
functions and the constants stay here and are looked up here, so a test that replaces
`worker.keras_packed.<name>` takes effect.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import keras
import numpy as np
import tensorflow as tf

from app.metrics import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS
from app.spec import TrainSpec
from worker.keras_models import compiled_model, fresh_state, set_state
from worker.packed_inputs import decode_rows, device_inputs, encode_rows
from worker.packed_layers import PackedDense, PackedMLP, dense
from worker.packed_program import _Program as _Program
from worker.packed_program import program_for
from worker.trainer import EpochMetrics, PreparedData, State, epoch_order, replicate_specs

__all__ = [  # the names moved out, and this module's own
    "CACHE_BLOCK_BYTES", "EAGER_PREDICT_ROWS", "EVAL_CHUNK", "MIN_BLOCK", "STEPS_PER_CALL", "PackedDense", "PackedMLP",
    "PackedTrainer", "accelerators", "decode_rows", "dense", "device_inputs", "encode_rows", "pack_count",
    "pack_devices", "program_for",
]

# Each pack runs its XLA loop on one core, packs in parallel threads: worker.main.configure_tensorflow
# turns XLA's Eigen threading off before TensorFlow starts (why: its docstring).

T = TypeVar("T")
STEPS_PER_CALL = 128  # training steps per compiled call; should_stop is checked between calls
EVAL_CHUNK = 10_000  # images per compiled evaluation call
EAGER_PREDICT_ROWS = 1024  # predictions on at most this many images run eagerly (no compile for them)
# A CPU thread's replicates train in blocks whose weights, gradients and optimizer slots fit in this
# many bytes, one block after another: the step's traffic stays in cache (2-core EPYC, 32 MiB L3, one
# thread, 10 replicates of width 256 with Adam: 6.8 ms a step as one block of 10 (32 MB), 5.0 ms as
# five blocks of 2; width 128: 2.60 vs 2.29 ms; width 32 (4 MB) stays one block). With two workers
# sharing the L3 (2026-12-04, Zen 5 EPYC, two processes, 10 replicates each, Adam, s per epoch): 4 MiB
# beat 8 MiB at width 64 (blocks of 5: 1.71-1.79 vs one of 10: 1.99-2.70) and 128 (blocks of 2:
# 2.96-3.08 vs 5: 3.02-3.50), but a block of one lost at 256 (6.9-8.3 vs blocks of 2: 5.3-5.7), so
# a block is sized for at least MIN_BLOCK replicates (a lane's remainder may be smaller).
CACHE_BLOCK_BYTES = 4 << 20
MIN_BLOCK = 2


def accelerators() -> list[str]:
    """The GPUs TensorFlow sees, by logical device name ("/device:GPU:0", ...)."""
    return [d.name for d in tf.config.list_logical_devices("GPU")]


def pack_devices() -> list[str | None]:
    """Where a trainer's packs run, one pack per entry: one per GPU (every replicate of a GPU's pack
    on that device), else one per CPU thread TensorFlow was given (SWEEPLAB_TF_THREADS; unset: one
    per core this process may use), None meaning TensorFlow's default device. XLA runs one pack's
    loop on one core, so more packs than threads would only take turns."""
    gpus = accelerators()
    if gpus:
        return list(gpus)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return [None] * max(1, min(cores, threads) if threads else cores)


def pack_count() -> int:
    """How many packs to train side by side (pack_devices)."""
    return len(pack_devices())


class _Pack:
    """Some replicates' weights as one PackedMLP, their optimizer state, shuffle seeds and learning rates."""

    def __init__(self, spec: TrainSpec, members: list[int], seeds: list[int], states: list[State],
                 inputs: int = 784, classes: int = 10, rates: list[float] | None = None,
                 device: str | None = None):
        with tf.device(device):
            self._build(spec, members, seeds, states, inputs, classes, rates)
        self.device = device
        self.lane = 0  # the trainer's thread that runs it (PackedTrainer._each)
        # Outputs of every replicate per input array (predict), until the weights change.
        self.outputs: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = {}

    def _build(self, spec: TrainSpec, members: list[int], seeds: list[int], states: list[State],
               inputs: int, classes: int, rates: list[float] | None) -> None:
        self.spec, self.r = spec, len(states)
        self.members = members  # the replicate at each position (dropped ones stay until a rebuild)
        self.seeds = seeds
        self.program = program_for(spec)
        self.model = PackedMLP(spec, self.r, inputs, classes)
        self.variables = list(self.model.trainable_variables)  # kernel 0, bias 0, kernel 1, ...
        for j, var in enumerate(self.variables):
            var.assign(np.stack([s[f"w/{j}"] for s in states]))
        steps = {int(s.get("opt/iteration", 0)) for s in states}
        if len(steps) > 1:
            raise ValueError(f"replicates of a pack must be at the same optimizer step, got {sorted(steps)}")
        self.has_opt_state = any("opt/iteration" in s for s in states)
        self.step = tf.constant(steps.pop(), tf.int64)
        # A state without optimizer entries is at step 0, where every slot is zero.
        self.slots = [[tf.constant(np.stack([s.get(f"opt/{name}/{j}", np.zeros(var.shape[1:], np.float32))
                                             for s in states]))
                       for name in self.program.slot_names()]
                      for j, var in enumerate(self.variables)]
        rates = rates if rates is not None else [float(spec.optimizer.learning_rate or 0)] * self.r
        if len(rates) != self.r:
            raise ValueError(f"{len(rates)} learning rates for a pack of {self.r}")
        self.rates = tf.constant(np.asarray(rates, np.float32))  # (r,): as Keras casts its rate to float32

    def weights(self) -> list[tf.Tensor]:
        return [v.value for v in self.variables]

    def epoch_batches(self, epoch: int, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Each step's batch indices per position (steps, R, B) and each step's batch size."""
        steps = math.ceil(n / batch)
        orders = np.zeros((self.r, steps * batch), np.int32)
        for p, seed in enumerate(self.seeds):
            orders[p, :n] = epoch_order(seed, epoch, n)
        sizes = np.full(steps, batch, np.float32)
        sizes[-1] = n - (steps - 1) * batch
        return orders.reshape(self.r, steps, batch).transpose(1, 0, 2), sizes

    def train_chunk(self, x: tf.Tensor, y: tf.Tensor, idx: np.ndarray, sizes: np.ndarray,
                    k_max: int) -> tuple[np.ndarray, np.ndarray]:
        n_steps = len(sizes)
        if n_steps < k_max:  # the same shapes every call: one compile
            idx = np.pad(idx, ((0, k_max - n_steps), (0, 0), (0, 0)))
            sizes = np.pad(sizes, (0, k_max - n_steps), constant_values=1)
        self.outputs.clear()
        with tf.device(self.device):
            weights, self.slots, self.step, loss, correct = self.program.train_steps(
                self.weights(), self.slots, self.step, self.rates, x, y, tf.constant(idx), tf.constant(sizes),
                tf.constant(n_steps))
            for var, w in zip(self.variables, weights, strict=True):
                var.assign(w)
        self.has_opt_state = True
        return loss.numpy(), correct.numpy()

    def evaluate(self, x: tf.Tensor, y: tf.Tensor, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy per replicate, all replicates in one product per chunk."""
        n = int(x.shape[0])
        loss, correct = np.zeros(self.r), np.zeros(self.r)
        for start in range(0, n, chunk):
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            valid = int(xs.shape[0])
            if valid < chunk:
                xs = tf.pad(xs, [[0, chunk - valid], [0, 0]])
                ys = tf.pad(ys, [[0, chunk - valid]])
            with tf.device(self.device):
                chunk_loss, chunk_correct = self.program.eval_chunk(self.weights(), xs, ys, tf.constant(valid))
            loss += chunk_loss.numpy()
            correct += chunk_correct.numpy()
        return loss / n, correct / n

    def predict(self, x: np.ndarray, chunk: int) -> np.ndarray:
        """Every replicate's outputs (R, N, classes) for prepared inputs x, computed once per input
        array until the weights change (the runner asks for each run of a pack in turn: a confusion
        matrix per run used to forward every replicate of the pack again). X is held with its
        outputs, so its memory cannot be reused for another array while cached."""
        x = np.asarray(x)
        key = (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str)
        held = self.outputs.get(key)
        if held is not None and held[0] is x:
            return held[1]
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        with tf.device(self.device):
            if len(flat) <= EAGER_PREDICT_ROWS:  # a few images: eagerly, no compile
                out = np.asarray(self.program.outputs(self.weights(), tf.constant(flat)))
            else:  # one compile per pack shape: chunks padded to CHUNK rows
                parts = []
                for start in range(0, len(flat), chunk):
                    rows = flat[start:start + chunk]
                    padded = np.pad(rows, ((0, chunk - len(rows)), (0, 0)))
                    parts.append(np.asarray(self.program.outputs_chunk(self.weights(), tf.constant(padded)))
                                 [:, :len(rows)])
                out = np.concatenate(parts, axis=1)
        self.outputs[key] = (x, out)
        return out

    def state(self, pos: int) -> State:
        out = {f"w/{j}": np.array(var.numpy()[pos]) for j, var in enumerate(self.variables)}
        if self.has_opt_state:
            out["opt/iteration"] = np.asarray(self.step.numpy(), dtype=np.int64)
            for j, slots in enumerate(self.slots):
                for name, slot in zip(self.program.slot_names(), slots, strict=True):
                    out[f"opt/{name}/{j}"] = np.array(slot.numpy()[pos])
        return out


class PackedTrainer:
    """Replicates of one config, or of configs that differ only in learning rate and epochs, as
    packed Keras models (see the module docstring): one pack per CPU thread (XLA runs each pack's
    loop on one core) or per GPU (pack_devices), trained in parallel threads. LEARNING_RATES: one
    per replicate, or None for the spec's."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None],
                 learning_rates: list[float] | None = None):
        self.spec, self.seeds = spec, list(seeds)
        self.specs = replicate_specs(spec, len(self.seeds), learning_rates)  # each replicate's own settings
        self.rates = [float(s.optimizer.learning_rate or 0) for s in self.specs]
        self.input_shape, self.classes = data.input_shape, data.classes
        full = [s if s is not None else fresh_state(spec, seed, self.input_shape, self.classes)
                for seed, s in zip(seeds, states, strict=True)]
        self.data = data
        self.n_train = len(data.x_train)
        self._saver: keras.Model | None = None  # save_keras' model
        # One chunk shape for both splits: one compile of the evaluation function.
        self.chunk = min(EVAL_CHUNK, max(len(data.x_train), len(data.x_test)))
        self.active = list(range(len(seeds)))  # replicates still trained
        devices = pack_devices()
        lanes = np.array_split(np.arange(len(seeds)), min(pack_count(), len(seeds)))
        self.packs = []  # in replicate order; each pack runs in its lane's thread, a lane's packs in turn
        for lane, members in enumerate(lanes):
            device = devices[lane % len(devices)]
            for block in self._blocks([int(i) for i in members], full[0], device):
                self.packs.append(self._pack(block, [full[i] for i in block], device, lane))

    def _blocks(self, members: list[int], state: State, device: str | None) -> list[list[int]]:
        """A CPU lane's replicates in blocks of as many as fit CACHE_BLOCK_BYTES of weights,
        gradients and optimizer slots, or MIN_BLOCK if fewer fit, split as evenly as they can be
        (one compile per size: a lane of 5 in blocks of 2 trains as 2, 2, 1); a GPU's stay one pack."""
        if device is not None and "GPU" in device.upper():
            return [members]
        arrays = 2 + len(program_for(self.spec).slot_names())  # weights, gradients, slots
        per_replicate = arrays * 4 * sum(int(v.size) for k, v in state.items() if k.startswith("w/"))
        size = max(MIN_BLOCK, CACHE_BLOCK_BYTES // per_replicate)
        return [[int(i) for i in block] for block in np.array_split(members, math.ceil(len(members) / size))]

    def _pack(self, members: list[int], states: list[State], device: str | None, lane: int) -> _Pack:
        pack = _Pack(self.spec, members, [self.seeds[i] for i in members], states,
                     math.prod(self.input_shape), self.classes, [self.rates[i] for i in members], device)
        pack.lane = lane
        return pack

    def _split(self, pack: _Pack, split: str) -> tuple[tf.Tensor, tf.Tensor]:
        """The pack's inputs and labels of SPLIT ("train" or "test"), on its device."""
        x_train, y_train, x_test, y_test = device_inputs(self.data, pack.device)
        return (x_train, y_train) if split == "train" else (x_test, y_test)

    def _locate(self, replicate: int) -> tuple[_Pack, int]:
        for pack in self.packs:
            if replicate in pack.members:
                return pack, pack.members.index(replicate)
        raise KeyError(f"replicate {replicate} is not in this trainer")

    def _each(self, fn: Callable[[_Pack], T]) -> list[T]:
        """fn on every pack, in pack order: each lane's packs one after another, lanes in parallel
        threads (TensorFlow releases the GIL while it runs)."""
        lanes: dict[int, list[int]] = {}
        for k, pack in enumerate(self.packs):
            lanes.setdefault(pack.lane, []).append(k)
        if len(lanes) == 1:
            return [fn(p) for p in self.packs]
        out: dict[int, T] = {}

        def run(ks: list[int]) -> None:
            for k in ks:
                out[k] = fn(self.packs[k])

        with ThreadPoolExecutor(len(lanes)) as pool:
            list(pool.map(run, lanes.values()))  # list(): a lane's exception is raised here
        return [out[k] for k in range(len(self.packs))]

    def _rebuild_sparse_packs(self) -> None:
        # Dropped replicates keep computing (harmlessly: nothing crosses replicates) until at most
        # half a pack is live; then a smaller pack is worth its recompile.
        packs = []
        for pack in self.packs:
            live = [i for i in pack.members if i in self.active]
            if live and len(live) <= pack.r // 2:
                pack = self._pack(live, [pack.state(pack.members.index(i)) for i in live], pack.device, pack.lane)
            if live:
                packs.append(pack)
        self.packs = packs

    def _metrics(self, train: list[tuple[np.ndarray, np.ndarray]],
                 test: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, EpochMetrics]:
        out = {}
        for pack, (loss, acc), (val_loss, val_acc) in zip(self.packs, train, test, strict=True):
            for p, i in enumerate(pack.members):
                if i in self.active:
                    out[i] = {LOSS: float(loss[p]), ACCURACY: float(acc[p]),
                              VAL_LOSS: float(val_loss[p]), VAL_ACCURACY: float(val_acc[p])}
        return out

    def _evaluate(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._each(lambda p: p.evaluate(*self._split(p, split), self.chunk))

    def evaluate(self) -> dict[int, EpochMetrics]:
        return self._metrics(self._evaluate("train"), self._evaluate("test"))

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        self._rebuild_sparse_packs()
        n, batch = self.n_train, self.spec.batch_size
        plans = {id(p): p.epoch_batches(epoch, n, batch) for p in self.packs}
        steps = math.ceil(n / batch)
        k_max = min(STEPS_PER_CALL, steps)
        sums = {id(p): (np.zeros(p.r, np.float32), np.zeros(p.r, np.float32)) for p in self.packs}
        for start in range(0, steps, k_max):
            if should_stop():
                return None

            def run(p: _Pack, start: int = start) -> tuple[np.ndarray, np.ndarray]:
                idx, sizes = plans[id(p)]
                return p.train_chunk(*self._split(p, "train"), idx[start:start + k_max],
                                     sizes[start:start + k_max], k_max)

            for p, (loss, correct) in zip(self.packs, self._each(run), strict=True):
                sums[id(p)][0][:] += loss
                sums[id(p)][1][:] += correct
        train = [(sums[id(p)][0] / np.float32(n), sums[id(p)][1] / np.float32(n)) for p in self.packs]
        return self._metrics(train, self._evaluate("test"))

    def state(self, replicate: int) -> State:
        pack, pos = self._locate(replicate)
        return pack.state(pos)

    def drop(self, replicate: int) -> None:
        if replicate in self.active:
            self.active.remove(replicate)

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.classes), np.float32)
        pack, pos = self._locate(replicate)
        return np.array(pack.predict(x, self.chunk)[pos])

    def save_keras(self, replicate: int, path: str) -> None:
        """The replicate as its own compiled Keras model. One model serves every replicate that has
        optimizer state (all its variables are set, the learning rate too): building and compiling
        one took about half of a save."""
        state = self.state(replicate)
        model = self._saver if "opt/iteration" in state else None
        if model is None:
            model = compiled_model(self.specs[replicate], self.seeds[replicate], self.input_shape, self.classes)
            self._saver = model if "opt/iteration" in state else None
        model.optimizer.learning_rate.assign(self.rates[replicate])
        set_state(model, state)
        model.save(path)
