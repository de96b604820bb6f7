"""The compiled loops of packed training: one architecture's, loss's and optimizer's XLA training,
evaluation and prediction functions (_Program), pure functions of the weights and optimizer slots
that the packs hold, shared by every pack of that shape in the process (program_for). Re-exported
by worker.keras_packed."""

from __future__ import annotations

import functools
from typing import Any

import keras
import tensorflow as tf

from app.spec import TrainSpec
from worker.keras_models import build_optimizer
from worker.packed_inputs import decode_rows
from worker.packed_layers import dense

FLIPPED_UNITS = 64  # kernels of at most this many outputs train transposed (transposed_kernels)


class _Program:
    """The compiled training and evaluation loops of one architecture, loss and optimizer, shared
    by every pack of that shape in the process (one XLA compile per pack size, not per pack).

    Pure functions of the weights and optimizer slots, which the packs hold. The updates are
    Keras' own formulas (keras/src/optimizers: sgd.py, adam.py, rmsprop.py, default settings)."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.hidden_activation = keras.activations.get(spec.model.activation)
        self.output_activation = keras.activations.get(spec.model.output_activation)
        opt = build_optimizer(spec)
        self.opt_name = spec.optimizer.name
        self.hyper = {k: float(getattr(opt, k)) for k in ("beta_1", "beta_2", "rho", "epsilon") if hasattr(opt, k)}
        if getattr(opt, "momentum", 0) or getattr(opt, "centered", False) or getattr(opt, "amsgrad", False):
            raise NotImplementedError("packed training implements Keras' default SGD, Adam and RMSprop")

    def slot_names(self) -> list[str]:
        return {"sgd": [], "adam": ["momentum", "velocity"], "rmsprop": ["velocity"]}[self.opt_name]

    def forward(self, weights: list[tf.Tensor], x: tf.Tensor, flips: list[bool] | None = None) -> tf.Tensor:
        """The output layer's pre-activation (R, B, 10); x as stored (encode_rows). FLIPS[j]: whether
        variable j is a transposed kernel (R, out, in) (transposed_kernels); none are by default."""
        flips = flips or [False] * len(weights)
        x = decode_rows(x, weights[0].shape[2] if flips[0] else weights[0].shape[1])
        for j in range(0, len(weights) - 2, 2):
            x = self.hidden_activation(dense(x, weights[j], weights[j + 1], flips[j]))
        return dense(x, weights[-2], weights[-1], flips[-2])

    def losses(self, z: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-sample loss and correctness (R, B), as Keras computes them from the output layer."""
        p = self.output_activation(z)
        if self.spec.loss == "mse":
            loss = tf.reduce_mean(tf.square(tf.one_hot(labels, z.shape[-1]) - p), axis=-1)
        else:
            if self.spec.model.output_activation in ("softmax", "sigmoid"):
                logits = z  # Keras takes the activation's own logits (`_keras_logits`), even a sigmoid's
            else:
                eps = keras.config.epsilon()
                logits = tf.math.log(tf.clip_by_value(p, eps, 1 - eps))
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        correct = tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), labels), tf.float32)
        return loss, correct

    def update(self, w: tf.Tensor, g: tf.Tensor, slots: list[tf.Tensor], step: tf.Tensor,
               rates: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """One optimizer step of one stacked variable (R, ...); `step` counts the steps before this
        one, RATES (R,) holds each replicate's learning rate."""
        h = self.hyper
        lr = tf.reshape(rates, [-1] + [1] * (len(w.shape) - 1))  # each replicate's rate over its slice
        if self.opt_name == "sgd":
            return w - g * lr, []
        if self.opt_name == "rmsprop":
            v = h["rho"] * slots[0] + (1 - h["rho"]) * tf.square(g)
            return w - (lr * g) / tf.sqrt(v + h["epsilon"]), [v]
        local_step = tf.cast(step + 1, tf.float32)
        alpha = lr * tf.sqrt(1 - tf.pow(h["beta_2"], local_step)) / (1 - tf.pow(h["beta_1"], local_step))
        m = slots[0] + (g - slots[0]) * (1 - h["beta_1"])
        v = slots[1] + (tf.square(g) - slots[1]) * (1 - h["beta_2"])
        return w - (m * alpha) / (tf.sqrt(v) + h["epsilon"]), [m, v]

    @tf.function(jit_compile=True, autograph=False)  # type: ignore[untyped-decorator]
    def train_steps(self, weights: list[tf.Tensor], slots: list[list[tf.Tensor]], step: tf.Tensor,
                    rates: tf.Tensor, x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor, sizes: tf.Tensor,
                    n_steps: tf.Tensor) -> tuple[Any, ...]:
        """Run steps 0..n_steps-1 of idx (K, R, B); sizes[k] is step k's real batch size (an epoch's
        last batch is partial: its padding is masked out). slots[j] holds variable j's optimizer
        slots, rates (R,) each replicate's learning rate. Returns the new weights, slots and step,
        and per replicate the sum of batch loss x batch size and the count of correct predictions,
        as Keras' metric trackers add them up."""
        r, batch = idx.shape[1], idx.shape[2]
        flips = transposed_kernels(weights)
        weights, slots = _flipped(weights, slots, flips)  # back on the way out: the packs' layout is Keras'

        def body(k: tf.Tensor, weights: list[tf.Tensor], slots: list[list[tf.Tensor]], step: tf.Tensor,
                 loss_sum: tf.Tensor, correct_sum: tf.Tensor) -> tuple[Any, ...]:
            size = sizes[k]
            mask = tf.cast(tf.range(batch) < tf.cast(size, tf.int32), tf.float32)
            labels = tf.gather(y, idx[k])
            with tf.GradientTape() as tape:
                tape.watch(weights)
                loss, correct = self.losses(self.forward(weights, tf.gather(x, idx[k]), flips), labels)
                batch_loss = tf.reduce_sum(loss * mask, axis=1) / size  # Keras' sum_over_batch_size
                total = tf.reduce_sum(batch_loss)  # replicates' losses summed: gradients stay apart
            grads = tape.gradient(total, weights)
            new = [self.update(w, g, s, step, rates) for w, g, s in zip(weights, grads, slots, strict=True)]
            return (k + 1, [w for w, _ in new], [s for _, s in new], step + 1,
                    loss_sum + batch_loss * size, correct_sum + tf.reduce_sum(correct * mask, axis=1))

        out = tf.while_loop(lambda k, *_: k < n_steps, body,
                            (tf.constant(0), weights, slots, step, tf.zeros([r]), tf.zeros([r])))
        trained, trained_slots = _flipped(out[1], out[2], flips)
        return (trained, trained_slots, *out[3:])

    @tf.function(jit_compile=True, autograph=False)  # type: ignore[untyped-decorator]
    def eval_chunk(self, weights: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor,
                   valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Summed loss and correct count per replicate over the first `valid` rows of x (C, 784)."""
        r = weights[0].shape[0]
        loss, correct = self.losses(self.forward(weights, x), tf.broadcast_to(y[None, :], [r, y.shape[0]]))
        mask = tf.cast(tf.range(y.shape[0]) < valid, tf.float32)
        return tf.reduce_sum(loss * mask, axis=1), tf.reduce_sum(correct * mask, axis=1)

    def outputs(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Every replicate's outputs (R, C, classes) for float32 rows x (C, features)."""
        return self.output_activation(self.forward(weights, x))

    @tf.function(jit_compile=True, autograph=False)  # type: ignore[untyped-decorator]
    def outputs_chunk(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        return self.outputs(weights, x)


def transposed_kernels(weights: list[tf.Tensor]) -> list[bool]:
    """Which stacked variables the training loop holds transposed, (R, out, in) instead of Keras'
    (R, in, out): the kernels of at most FLIPPED_UNITS outputs. XLA's CPU dots for them run faster
    that way, the weight gradient above all (dz^T x has the input's long rows as its own), and the
    update is elementwise, so the mathematics is the same. Measured 2026-12-04 on the 2-core Zen 5
    EPYC, 10 replicates, Adam, one thread, microseconds per step: no hidden layer 698 -> 276, width 2
    375 -> 201, 8 389 -> 247, 32 735 -> 484-494, 64 915 -> 860; for 128 outputs it lost (1725 ->
    1909 with both layers flipped), wider hidden layers keep Keras' layout and gain on the output
    layer alone (256: 3065 -> 2795)."""
    return [len(w.shape) == 3 and int(w.shape[2]) <= FLIPPED_UNITS for w in weights]


def _flipped(weights: list[tf.Tensor], slots: list[list[tf.Tensor]],
             flips: list[bool]) -> tuple[list[tf.Tensor], list[list[tf.Tensor]]]:
    """WEIGHTS and their optimizer SLOTS with the FLIPS kernels' last two axes swapped (its own inverse)."""
    def swap(t: tf.Tensor, flip: bool) -> tf.Tensor:
        return tf.transpose(t, [0, 2, 1]) if flip else t

    return ([swap(w, f) for w, f in zip(weights, flips, strict=True)],
            [[swap(s, f) for s in ss] for ss, f in zip(slots, flips, strict=True)])


@functools.lru_cache(maxsize=16)
def _program(key: str) -> _Program:
    return _Program(TrainSpec.model_validate_json(key))


def program_for(spec: TrainSpec) -> _Program:
    """The shared program of spec's architecture, loss and optimizer (not its learning rate)."""
    shape = spec.model_dump(include={"model", "loss"}) | {"optimizer": {"name": spec.optimizer.name}}
    return _program(TrainSpec.model_validate(shape).model_dump_json())
