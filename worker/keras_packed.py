"""Replicates of one config packed into one Keras model, trained together in one XLA loop.

Replicates differ only in their seed, so their Dense kernels are stacked into (R, in, out)
variables and every step runs one batched matmul for all of them. Each replicate still sees
exactly what it would alone: its own initial weights (copied from a standalone model), its own
shuffle order, its own loss with Keras' reduction (the pack minimises the sum of the R losses, so
gradients stay separate) and its own optimizer slots (SGD, Adam and RMSprop are elementwise, so
one optimizer over stacked variables is the same mathematics).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from app.spec import TrainSpec
from worker.keras_models import build_optimizer, compiled_model, fresh_state, set_state
from worker.trainer import EpochMetrics, PreparedData, State, epoch_order

STEPS_PER_CALL = 128  # training steps per compiled call; should_stop is checked between calls
EVAL_CHUNK = 10_000  # images per compiled evaluation call
SLOTS = {"momentum": "_momentums", "velocity": "_velocities"}


def configure_threads(intra_op: int, inter_op: int) -> bool:
    """Set TensorFlow's thread pools; False if the runtime had already started (then unchanged)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        return False
    return True


class PackedDense(keras.layers.Layer):
    """R independent Dense layers: kernel (R, in, out), bias (R, out)."""

    def __init__(self, replicates: int, units: int, activation: str | None = None, **kwargs: object):
        super().__init__(**kwargs)
        self.replicates, self.units = replicates, units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = (self.replicates, int(input_shape[-1]), self.units)
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.replicates, self.units), initializer="zeros", name="bias")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x is (R, B, in), one batch per replicate, or (B, in) shared by all (evaluation).
        if len(x.shape) == 2:
            y = tf.einsum("bi,rio->rbo", x, self.kernel)
        else:
            y = tf.einsum("rbi,rio->rbo", x, self.kernel)
        return self.activation(y + self.bias[:, None, :])


class PackedMLP(keras.Model):
    """The study's MLP, R times over; returns the output layer's pre-activation (R, B, 10)."""

    def __init__(self, spec: TrainSpec, replicates: int):
        super().__init__()
        widths = [*spec.model.hidden, 10]
        acts = [spec.model.activation] * len(spec.model.hidden) + [None]
        self.dense = [PackedDense(replicates, w, a) for w, a in zip(widths, acts, strict=True)]
        self.build((None, 784))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        width = int(input_shape[-1])
        for layer in self.dense:
            layer.build((None, width))
            width = layer.units
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.dense:
            x = layer(x)
        return x


class _Pack:
    """One packed model, its optimizer and its compiled training and evaluation loops."""

    def __init__(self, spec: TrainSpec, states: list[State]):
        self.spec, self.r = spec, len(states)
        self.model = PackedMLP(spec, self.r)
        self.variables = list(self.model.trainable_variables)  # kernel 0, bias 0, kernel 1, ...
        for j, var in enumerate(self.variables):
            var.assign(np.stack([s[f"w/{j}"] for s in states]))
        self.optimizer = build_optimizer(spec)
        self.optimizer.build(self.variables)
        self.slots = {
            f"opt/{slot}/{j}": var
            for slot, attr in SLOTS.items()
            for j, var in enumerate(getattr(self.optimizer, attr, None) or [])
        }
        steps = {int(s.get("opt/iteration", 0)) for s in states}
        if len(steps) > 1:
            raise ValueError(f"replicates of a pack must be at the same optimizer step, got {sorted(steps)}")
        self.has_opt_state = any("opt/iteration" in s for s in states)
        if self.has_opt_state:
            self.optimizer.iterations.assign(steps.pop())
            for key, var in self.slots.items():
                # A state without optimizer entries is at step 0, where every slot is zero.
                var.assign(np.stack([s.get(key, np.zeros(var.shape[1:], np.float32)) for s in states]))
        self.output_activation = keras.activations.get(spec.model.output_activation)

    def _losses(self, z: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-sample loss and correctness (R, B), as Keras computes them from the output layer."""
        p = self.output_activation(z)
        if self.spec.loss == "mse":
            loss = tf.reduce_mean(tf.square(tf.one_hot(labels, 10) - p), axis=-1)
        else:
            if self.spec.model.output_activation in ("softmax", "sigmoid"):
                logits = z  # Keras takes the activation's own logits (`_keras_logits`), even for sigmoid
            else:
                eps = keras.config.epsilon()
                logits = tf.math.log(tf.clip_by_value(p, eps, 1 - eps))
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        correct = tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), labels), tf.float32)
        return loss, correct

    @tf.function(jit_compile=True)
    def train_steps(self, x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor, sizes: tf.Tensor,
                    n_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Run steps 0..n_steps-1 of idx (K, R, B); sizes[k] is step k's real batch size (the last
        batch of an epoch is partial: its padding is masked out). Returns per replicate the sum of
        batch loss x batch size and the count of correct predictions, as Keras' trackers add them."""
        batch = idx.shape[2]
        loss_sum = tf.zeros([self.r])
        correct_sum = tf.zeros([self.r])
        for k in tf.range(n_steps):
            labels = tf.gather(y, idx[k])
            size = sizes[k]
            mask = tf.cast(tf.range(batch) < tf.cast(size, tf.int32), tf.float32)
            with tf.GradientTape() as tape:
                loss, correct = self._losses(self.model(tf.gather(x, idx[k])), labels)
                batch_loss = tf.reduce_sum(loss * mask, axis=1) / size  # Keras' sum_over_batch_size
                total = tf.reduce_sum(batch_loss)
            grads = tape.gradient(total, self.variables)
            self.optimizer.apply(grads, self.variables)
            loss_sum += batch_loss * size
            correct_sum += tf.reduce_sum(correct * mask, axis=1)
        return loss_sum, correct_sum

    @tf.function(jit_compile=True)
    def eval_chunk(self, x: tf.Tensor, y: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Summed loss and correct count per replicate over the first `valid` rows of x (C, 784)."""
        labels = tf.broadcast_to(y[None, :], [self.r, y.shape[0]])
        loss, correct = self._losses(self.model(x), labels)
        mask = tf.cast(tf.range(y.shape[0]) < valid, tf.float32)
        return tf.reduce_sum(loss * mask, axis=1), tf.reduce_sum(correct * mask, axis=1)

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
            chunk_loss, chunk_correct = self.eval_chunk(xs, ys, tf.constant(valid))
            loss += chunk_loss.numpy()
            correct += chunk_correct.numpy()
        return loss / n, correct / n

    def state(self, pos: int) -> State:
        out = {f"w/{j}": np.array(var.numpy()[pos]) for j, var in enumerate(self.variables)}
        if self.has_opt_state:
            out["opt/iteration"] = np.asarray(self.optimizer.iterations.numpy(), dtype=np.int64)
            out.update({key: np.array(var.numpy()[pos]) for key, var in self.slots.items()})
        return out


class PackedTrainer:
    """Replicates of one config as one packed Keras model (see the module docstring)."""

    def __init__(self, spec: TrainSpec, seeds: list[int], data: PreparedData, states: list[State | None]):
        self.spec, self.seeds = spec, list(seeds)
        full = [s if s is not None else fresh_state(spec, seed) for seed, s in zip(seeds, states, strict=True)]
        self.x_train = tf.constant(data.x_train.reshape(len(data.x_train), -1), tf.float32)
        self.y_train = tf.constant(data.y_train, tf.int32)
        self.x_test = tf.constant(data.x_test.reshape(len(data.x_test), -1), tf.float32)
        self.y_test = tf.constant(data.y_test, tf.int32)
        # One chunk shape for both splits: one compile of the evaluation function.
        self.chunk = min(EVAL_CHUNK, max(len(data.x_train), len(data.x_test)))
        self.active = list(range(len(seeds)))  # replicates still trained
        self.pack = _Pack(spec, full)
        self.slots = list(self.active)  # the replicate at each pack position, dropped ones included

    def _rebuild_if_sparse(self) -> None:
        # Dropped replicates keep computing (harmlessly: nothing crosses replicates) until at most
        # half the pack is live; then a smaller pack is worth its recompile.
        if 0 < len(self.active) <= self.pack.r // 2:
            states = [self.state(i) for i in self.active]
            self.pack = _Pack(self.spec, states)
            self.slots = list(self.active)

    def _metrics(self, loss: np.ndarray, acc: np.ndarray, val_loss: np.ndarray,
                 val_acc: np.ndarray) -> dict[int, EpochMetrics]:
        return {i: {"loss": float(loss[p]), "accuracy": float(acc[p]),
                    "val_loss": float(val_loss[p]), "val_accuracy": float(val_acc[p])}
                for i, p in ((i, self.slots.index(i)) for i in self.active)}

    def evaluate(self) -> dict[int, EpochMetrics]:
        loss, acc = self.pack.evaluate(self.x_train, self.y_train, self.chunk)
        val_loss, val_acc = self.pack.evaluate(self.x_test, self.y_test, self.chunk)
        return self._metrics(loss, acc, val_loss, val_acc)

    def _epoch_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Per step, each pack slot's batch indices (steps, R, B) and the step's batch size."""
        n, batch = int(self.x_train.shape[0]), self.spec.batch_size
        steps = math.ceil(n / batch)
        orders = np.zeros((self.pack.r, steps * batch), np.int32)
        for p, i in enumerate(self.slots):
            orders[p, :n] = epoch_order(self.seeds[i], epoch, n)
        sizes = np.full(steps, batch, np.float32)
        sizes[-1] = n - (steps - 1) * batch
        return orders.reshape(self.pack.r, steps, batch).transpose(1, 0, 2), sizes

    def train_epoch(self, epoch: int, should_stop: Callable[[], bool]) -> dict[int, EpochMetrics] | None:
        if not self.active:
            return {}
        self._rebuild_if_sparse()
        idx, sizes = self._epoch_batches(epoch)
        k_max = min(STEPS_PER_CALL, len(sizes))
        loss_sum = np.zeros(self.pack.r, np.float32)
        correct = np.zeros(self.pack.r, np.float32)
        for start in range(0, len(sizes), k_max):
            if should_stop():
                return None
            chunk_idx, chunk_sizes = idx[start:start + k_max], sizes[start:start + k_max]
            n_steps = len(chunk_sizes)
            if n_steps < k_max:  # same shapes every call: one compile
                chunk_idx = np.pad(chunk_idx, ((0, k_max - n_steps), (0, 0), (0, 0)))
                chunk_sizes = np.pad(chunk_sizes, (0, k_max - n_steps), constant_values=1)
            s, c = self.pack.train_steps(self.x_train, self.y_train, tf.constant(chunk_idx),
                                         tf.constant(chunk_sizes), tf.constant(n_steps))
            loss_sum += s.numpy()
            correct += c.numpy()
        self.pack.has_opt_state = True
        n = float(self.x_train.shape[0])
        val_loss, val_acc = self.pack.evaluate(self.x_test, self.y_test, self.chunk)
        return self._metrics(loss_sum / np.float32(n), correct / np.float32(n), val_loss, val_acc)

    def state(self, replicate: int) -> State:
        return self.pack.state(self.slots.index(replicate))

    def drop(self, replicate: int) -> None:
        if replicate in self.active:
            self.active.remove(replicate)

    def predict(self, replicate: int, x: np.ndarray) -> np.ndarray:
        flat = tf.constant(np.asarray(x, np.float32).reshape(len(x), -1))
        pos = self.slots.index(replicate)
        outs = [self.pack.output_activation(self.pack.model(flat[s:s + self.chunk]))[pos]
                for s in range(0, len(x), self.chunk)]
        return np.concatenate([np.asarray(o) for o in outs]) if outs else np.zeros((0, 10), np.float32)

    def save_keras(self, replicate: int, path: str) -> None:
        model = compiled_model(self.spec, self.seeds[replicate])
        set_state(model, self.state(replicate))
        model.save(path)
