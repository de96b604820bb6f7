"""The packed trainer computes what separate Keras models compute, replicate by replicate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras

from app.spec import TrainSpec
from worker import keras_packed
from worker.keras_models import compiled_model, fresh_state, get_state, set_state
from worker.keras_packed import PackedTrainer
from worker.keras_single import SingleTrainer
from worker.trainer import METRIC_KEYS, EpochMetrics, PreparedData, State, epoch_order

SEEDS = [3, 17, 40]
BATCH = 32  # 200 training images: six full batches and a partial one of 8


def never() -> bool:
    return False


def make_data(n_train: int = 200, n_test: int = 100) -> PreparedData:
    """Noisy copies of ten random prototypes: learnable, so losses and accuracies move."""
    rng = np.random.default_rng(0)
    protos = rng.random((10, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n_train + n_test)
    x = 0.6 * protos[y] + 0.4 * rng.random((len(y), 28, 28), dtype=np.float32)
    return PreparedData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def make_spec(hidden: list[int], output: str, loss: str, optimizer: str, lr: float | None = None,
              activation: str = "relu") -> TrainSpec:
    opt: dict[str, Any] = {"name": optimizer} | ({"learning_rate": lr} if lr else {})
    return TrainSpec.model_validate({
        "model": {"hidden": hidden, "activation": activation, "output_activation": output},
        "loss": loss, "optimizer": opt, "batch_size": BATCH,
    })


@pytest.fixture
def one_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """All replicates in one pack (one compile; the default splits them over the CPU cores)."""
    monkeypatch.setattr(keras_packed, "pack_count", lambda: 1)


def keras_reference(model: keras.Sequential, spec: TrainSpec, seed: int, data: PreparedData,
                    epochs: int) -> tuple[list[EpochMetrics], State]:
    """A standalone Sequential, reset to the seed's fresh state, trained batch by batch in the
    replicate's own order (one model for all seeds: Keras compiles its train step once)."""
    state = fresh_state(spec, seed)
    if model.optimizer.built:  # a fresh optimizer: step 0, all slots zero
        state |= {k: np.zeros_like(v) for k, v in get_state(model).items() if k.startswith("opt/")}
    set_state(model, state)
    y_train, y_test = data.targets(spec.loss, "train"), data.targets(spec.loss, "test")
    n = len(data.x_train)
    history = []
    for epoch in range(1, epochs + 1):
        order = epoch_order(seed, epoch, n)
        loss = acc = 0.0
        for start in range(0, n, spec.batch_size):
            batch = order[start:start + spec.batch_size]
            logs = model.train_on_batch(data.x_train[batch], y_train[batch], return_dict=True)
            # Keras' history weights each batch's mean by its size.
            loss += logs["loss"] * len(batch)
            acc += logs["accuracy"] * len(batch)
        val_loss, val_acc = model.evaluate(data.x_test, y_test, batch_size=spec.batch_size, verbose=0)
        history.append({"loss": loss / n, "accuracy": acc / n, "val_loss": val_loss, "val_accuracy": val_acc})
    return history, get_state(model)


def assert_metrics_close(got: EpochMetrics, want: EpochMetrics, tol: float) -> None:
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=tol, abs=tol), key


def assert_states_close(got: State, want: State, tol: float) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], rtol=tol, atol=tol, err_msg=key)


CASES = [  # hidden, output, loss, optimizer, learning rate, hidden activation
    pytest.param([16], "relu", "mse", "sgd", 0.1, "relu", id="study-baseline"),
    pytest.param([], "softmax", "sparse_categorical_crossentropy", "adam", None, "relu", id="no-hidden"),
    pytest.param([8, 8, 8], "softmax", "sparse_categorical_crossentropy", "rmsprop", None, "relu",
                 id="three-hidden"),
    pytest.param([12], "relu", "mse", "adam", None, "relu", id="relu-mse-adam"),
    pytest.param([8], "softmax", "mse", "rmsprop", None, "tanh", id="softmax-mse"),
    # Keras takes a sigmoid output's own logits and applies a softmax crossentropy to them.
    pytest.param([6], "sigmoid", "sparse_categorical_crossentropy", "adam", None, "relu", id="sigmoid-ce"),
    pytest.param([8], "linear", "mse", "sgd", 0.05, "sigmoid", id="linear-mse"),
    # A kernel wider than FLIPPED_UNITS keeps Keras' layout in the loop, the narrower ones turn.
    pytest.param([72, 8], "softmax", "sparse_categorical_crossentropy", "adam", None, "relu",
                 id="mixed-kernel-layouts"),
]


def test_narrow_kernels_train_transposed_and_wide_ones_as_keras_holds_them() -> None:
    """The loop's layout of the mixed-kernel-layouts case: its 784x72 kernel as Keras holds it,
    the 72x8 and 8x10 kernels transposed; biases never (so that case tests both layouts)."""
    import tensorflow as tf

    from worker.packed_program import FLIPPED_UNITS, transposed_kernels

    assert 8 < FLIPPED_UNITS < 72
    pack = PackedTrainer(make_spec([72, 8], "softmax", "sparse_categorical_crossentropy", "adam"), SEEDS,
                         make_data(40, 10), [None] * len(SEEDS)).packs[0]
    assert transposed_kernels([tf.constant(w) for w in pack.weights()]) == [False, False, True, False, True, False]


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
@pytest.mark.parametrize(("hidden", "output", "loss", "optimizer", "lr", "activation"), CASES)
def test_packed_matches_separate_keras_models(hidden: list[int], output: str, loss: str, optimizer: str,
                                              lr: float | None, activation: str) -> None:
    spec = make_spec(hidden, output, loss, optimizer, lr, activation)
    data = make_data()
    packed = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    history = [packed.train_epoch(epoch, never) for epoch in (1, 2)]
    model = compiled_model(spec, SEEDS[0])
    for r, seed in enumerate(SEEDS):
        want_history, want_state = keras_reference(model, spec, seed, data, epochs=2)
        for got, want in zip(history, want_history, strict=True):
            assert got is not None
            assert_metrics_close(got[r], want, 1e-5)
        assert_states_close(packed.state(r), want_state, 1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "relu", "linear"])
@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "mse"])
def test_evaluate_matches_keras_evaluate(output: str, loss: str) -> None:
    # Training through relu or linear outputs with crossentropy is too ill-conditioned to compare
    # (Keras clips them to [eps, 1 - eps], and the gradient of log(p) near eps amplifies rounding
    # a millionfold), so its formula is pinned here, on the loss of fixed weights.
    spec = make_spec([8], output, loss, "sgd")
    data = make_data(64, 32)
    got = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS)).evaluate()
    model = compiled_model(spec, SEEDS[0])
    for r, seed in enumerate(SEEDS):
        set_state(model, fresh_state(spec, seed))
        for split, prefix in (("train", ""), ("test", "val_")):
            x = data.x_train if split == "train" else data.x_test
            want_loss, want_acc = model.evaluate(x, data.targets(loss, split), verbose=0)
            assert got[r][f"{prefix}loss"] == pytest.approx(want_loss, rel=1e-5)
            assert got[r][f"{prefix}accuracy"] == pytest.approx(want_acc, abs=1e-6)


@pytest.mark.slow
def test_packed_agrees_with_single_trainer() -> None:
    spec = make_spec([16], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data()
    packed = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    single = SingleTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    assert len({id(p.program) for p in packed.packs}) == 1  # one compiled program per architecture
    results: list[tuple[dict[int, EpochMetrics] | None, dict[int, EpochMetrics] | None]]
    results = [(packed.evaluate(), single.evaluate())]
    results += [(packed.train_epoch(e, never), single.train_epoch(e, never)) for e in (1, 2)]
    for got, want in results:
        assert got is not None and want is not None
        assert sorted(got) == sorted(want) == [0, 1, 2]
        for r in got:
            assert_metrics_close(got[r], want[r], 1e-5)
    for r in range(len(SEEDS)):
        assert_states_close(packed.state(r), single.state(r), 1e-4)


def test_initial_weights_are_standalone_glorot_uniform() -> None:
    spec = make_spec([256], "softmax", "sparse_categorical_crossentropy", "adam")
    packed = PackedTrainer(spec, [0, 1, 2], make_data(20, 10), [None, None, None])
    states = [packed.state(r) for r in range(3)]
    for r, state in enumerate(states):
        assert sorted(state) == ["w/0", "w/1", "w/2", "w/3"]  # no optimizer state before training
        for key, (fan_in, fan_out) in (("w/0", (784, 256)), ("w/2", (256, 10))):
            w = state[key].astype(np.float64)
            assert w.shape == (fan_in, fan_out)
            limit = np.sqrt(6 / (fan_in + fan_out))
            assert np.abs(w).max() <= limit
            assert abs(w.mean()) < 4 * limit / np.sqrt(3 * w.size)  # four standard errors
            # Variance of U(-a, a) is a^2/3; its sampling error is a^2 sqrt(4/45/size).
            assert w.var() == pytest.approx(2 / (fan_in + fan_out), abs=4 * limit**2 * np.sqrt(4 / 45 / w.size))
        assert not state["w/1"].any() and not state["w/3"].any()
        assert_states_close(state, fresh_state(spec, [0, 1, 2][r]), 0)
    assert not np.allclose(states[0]["w/0"], states[1]["w/0"])
    assert not np.allclose(states[1]["w/2"], states[2]["w/2"])


def test_fresh_state_is_a_compiled_standalone_models_initial_weights() -> None:
    """fresh_state skips the compile: the weights must still be compiled_model's, bit for bit."""
    spec = make_spec([8, 4], "softmax", "sparse_categorical_crossentropy", "adam")
    for seed in (0, 17):
        want = [np.asarray(v.numpy()) for v in compiled_model(spec, seed).trainable_variables]
        got = fresh_state(spec, seed)
        assert sorted(got) == [f"w/{j}" for j in range(len(want))]
        for j, w in enumerate(want):
            np.testing.assert_array_equal(got[f"w/{j}"], w)


def test_pack_refuses_replicates_at_different_steps() -> None:
    spec = make_spec([4], "softmax", "sparse_categorical_crossentropy", "sgd")
    behind = fresh_state(spec, 1) | {"opt/iteration": np.asarray(3, np.int64)}
    with pytest.raises(ValueError, match="same optimizer step"):
        keras_packed._Pack(spec, [0, 1], [0, 1], [fresh_state(spec, 0), behind])


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
def test_resume_from_state_continues_identically() -> None:
    spec = make_spec([8], "relu", "mse", "adam")
    data = make_data()
    straight = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    want = [straight.train_epoch(e, never) for e in (1, 2)][1]
    first = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    first.train_epoch(1, never)
    states: list[State | None] = [first.state(r) for r in range(len(SEEDS))]
    assert all(s is not None and int(s["opt/iteration"]) == 7 for s in states)
    resumed = PackedTrainer(spec, SEEDS, data, states)
    single = SingleTrainer(spec, SEEDS, data, states)
    got, got_single = resumed.train_epoch(2, never), single.train_epoch(2, never)
    assert want is not None and got is not None and got_single is not None
    for r in range(len(SEEDS)):
        assert_metrics_close(got[r], want[r], 1e-6)
        assert_states_close(resumed.state(r), straight.state(r), 1e-6)
        assert_metrics_close(got_single[r], want[r], 1e-5)
        assert_states_close(single.state(r), straight.state(r), 1e-4)


@pytest.mark.slow
def test_drop_leaves_other_replicates_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_packed, "pack_count", lambda: 1)  # one pack: masking, then a rebuild
    spec = make_spec([8], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data()
    seeds = [*SEEDS, 99]
    straight = PackedTrainer(spec, seeds, data, [None] * len(seeds))
    want = [straight.train_epoch(e, never) for e in (1, 2, 3)]
    dropping = PackedTrainer(spec, seeds, data, [None] * len(seeds))
    got = [dropping.train_epoch(1, never)]
    dropping.drop(1)  # 3 of 4 left: the pack keeps its shape
    got.append(dropping.train_epoch(2, never))
    dropping.drop(3)  # 2 of 4 left: the pack is rebuilt from the survivors' states
    got.append(dropping.train_epoch(3, never))
    assert [sorted(g or {}) for g in got] == [[0, 1, 2, 3], [0, 2, 3], [0, 2]]
    assert len(dropping.packs) == 1 and dropping.packs[0].r == 2
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        for r in g:
            assert_metrics_close(g[r], w[r], 1e-5)
    for r in (0, 2):
        assert_states_close(dropping.state(r), straight.state(r), 1e-5)


@pytest.mark.slow
def test_stop_predict_and_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec([8], "softmax", "sparse_categorical_crossentropy", "sgd")
    data = make_data(400, 50)  # 13 steps: stop is looked at between chunks of steps
    monkeypatch.setattr(keras_packed, "STEPS_PER_CALL", 4)
    trainer = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    calls: list[int] = []

    def third_look() -> bool:
        calls.append(1)
        return len(calls) > 2

    assert trainer.train_epoch(1, third_look) is None
    assert len(calls) == 3
    out = trainer.predict(1, data.x_test[:5])
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    path = str(tmp_path / "model.keras")
    trainer.save_keras(1, path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(data.x_test[:5], verbose=0), out, rtol=1e-5, atol=1e-6)
    weights = {k: v for k, v in trainer.state(1).items() if k.startswith("w/")}
    assert_states_close({k: v for k, v in get_state(loaded).items() if k.startswith("w/")}, weights, 0)


# ---- mixed packs: configs that differ only in learning rate and epochs train in one pack (app/packing.py)

MIXED = [  # optimizer, each replicate's learning rate, each replicate's epochs
    pytest.param("sgd", [0.2, 0.05, 0.01, 0.1], [1, 3, 2, 3], id="sgd"),
    pytest.param("adam", [0.01, 0.001, 0.003, 0.0003], [3, 1, 2, 3], id="adam"),
    pytest.param("rmsprop", [0.001, 0.01, 0.0003, 0.003], [2, 3, 3, 1], id="rmsprop"),
]


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
@pytest.mark.parametrize(("optimizer", "rates", "epochs"), MIXED)
def test_a_mixed_pack_matches_each_replicates_own_keras_model(optimizer: str, rates: list[float],
                                                              epochs: list[int]) -> None:
    """Four replicates of one architecture with four learning rates and three epoch counts in one
    pack, each dropped when its own epochs are done (as the runner does): every replicate's
    per-epoch metrics and final weights and optimizer state are its own Keras model's, trained
    alone with its own rate for its own epochs. One pack of 4 keeps its shape while 3 are live and
    is rebuilt from the survivors' states at 2, so the rates must follow the replicates."""
    spec = make_spec([8], "softmax", "sparse_categorical_crossentropy", optimizer)
    data = make_data(128, 40)
    seeds = [*SEEDS, 99]
    packed = PackedTrainer(spec, seeds, data, [None] * len(seeds), learning_rates=rates)
    history: dict[int, list[EpochMetrics]] = {r: [] for r in range(len(seeds))}
    final: dict[int, State] = {}
    for epoch in range(1, max(epochs) + 1):
        got = packed.train_epoch(epoch, never)
        assert got is not None and sorted(got) == [r for r in range(len(seeds)) if epochs[r] >= epoch]
        for r, metrics in got.items():
            history[r].append(metrics)
            if epochs[r] == epoch:  # its epochs are done: read it, then it leaves the pack
                final[r] = packed.state(r)
                packed.drop(r)
    assert [p.r for p in packed.packs] == [2]  # rebuilt for the last epoch
    model = compiled_model(spec, seeds[0])
    for r, seed in enumerate(seeds):
        model.optimizer.learning_rate = rates[r]  # the compiled step reads the rate's variable
        want_history, want_state = keras_reference(model, spec, seed, data, epochs=epochs[r])
        assert len(history[r]) == epochs[r]
        for got_epoch, want_epoch in zip(history[r], want_history, strict=True):
            assert_metrics_close(got_epoch, want_epoch, 1e-5)
        assert_states_close(final[r], want_state, 1e-4)
    # The rates matter: the two replicates that ran all three epochs learned differently.
    both = [r for r in range(len(seeds)) if epochs[r] == 3]
    assert not np.allclose(final[both[0]]["w/0"], final[both[1]]["w/0"])


def test_mixed_rates_reach_each_standalone_model_and_saved_file(tmp_path: Path) -> None:
    """The one-model trainer compiles each replicate with its own rate; a packed replicate's saved
    model carries its own rate too; a rate list that does not fit the pack is refused."""
    spec = make_spec([4], "softmax", "sparse_categorical_crossentropy", "rmsprop")
    data = make_data(20, 10)
    single = SingleTrainer(spec, [1, 2], data, [None, None], learning_rates=[0.5, 0.025])
    assert [float(m.optimizer.learning_rate.numpy()) for m in single.models.values()] == pytest.approx([0.5, 0.025])
    packed = PackedTrainer(spec, [1, 2], data, [None, None], learning_rates=[0.5, 0.025])
    assert [float(rate) for p in packed.packs for rate in p.rates.numpy()] == pytest.approx([0.5, 0.025])
    packed.save_keras(1, str(tmp_path / "one.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "one.keras"))
    assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="3 learning rates for 2 replicates"):
        PackedTrainer(spec, [1, 2], data, [None, None], learning_rates=[0.1, 0.2, 0.3])


# ---- byte images (MNIST's kind): gathered as 64-bit words of their bytes, decoded exactly

def byte_images(data: PreparedData) -> PreparedData:
    """DATA's images rounded to bytes and scaled as PreparedData scales uint8 images."""
    def scaled(x: np.ndarray) -> np.ndarray:
        as_float: np.ndarray = np.rint(x * 255).astype(np.uint8).astype(np.float32) / 255.0
        return as_float
    return PreparedData(scaled(data.x_train), data.y_train, scaled(data.x_test), data.y_test)


def test_byte_images_are_stored_as_their_bytes_and_decode_to_the_same_floats() -> None:
    import tensorflow as tf

    values = np.tile(np.arange(256, dtype=np.uint8), 49).reshape(16, 784)  # every byte, 16 rows of 784
    floats = values.astype(np.float32) / 255.0
    words = keras_packed.encode_rows(floats)
    assert words.dtype == np.uint64 and words.shape == (16, 98)
    idx = tf.constant([[3, 0, 15], [7, 7, 1]])  # (R, B) as the training loop gathers

    @tf.function(jit_compile=True, autograph=False)  # type: ignore[untyped-decorator]
    def gathered(x: tf.Tensor) -> tf.Tensor:
        return keras_packed.decode_rows(tf.gather(x, idx), 784)

    got = gathered(tf.constant(words)).numpy()
    assert got.dtype == np.float32 and got.shape == (2, 3, 784)
    np.testing.assert_array_equal(got.view(np.uint32), floats[idx.numpy()].view(np.uint32))  # bit for bit
    odd = floats[:, :7]  # a row of 7 bytes: no whole words, bytes as they are
    assert keras_packed.encode_rows(odd).dtype == np.uint8
    np.testing.assert_array_equal(keras_packed.decode_rows(tf.constant(keras_packed.encode_rows(odd)), 7).numpy(),
                                  odd)
    off = floats.copy()
    off[2, 5] = np.nextafter(off[2, 5], np.float32(2))  # one value that no byte gives: floats stay floats
    for not_bytes in (off, make_data(20, 10).x_train, -floats, floats * 2):
        stored = keras_packed.encode_rows(not_bytes)
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, not_bytes.reshape(len(not_bytes), -1))


BYTE_CASES = [
    pytest.param([16], "relu", "mse", "sgd", 0.1, id="study-baseline-bytes"),
    pytest.param([8, 8], "softmax", "sparse_categorical_crossentropy", "adam", None, id="adam-two-hidden-bytes"),
]


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
@pytest.mark.parametrize(("hidden", "output", "loss", "optimizer", "lr"), BYTE_CASES)
def test_packed_on_byte_images_matches_separate_keras_models(hidden: list[int], output: str, loss: str,
                                                             optimizer: str, lr: float | None) -> None:
    spec = make_spec(hidden, output, loss, optimizer, lr)
    data = byte_images(make_data())
    packed = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    assert packed._split(packed.packs[0], "train")[0].dtype.name == "uint64"  # the byte path is the one tested
    before = packed.evaluate()
    history = [packed.train_epoch(epoch, never) for epoch in (1, 2)]
    model = compiled_model(spec, SEEDS[0])
    for r, seed in enumerate(SEEDS):
        want_history, want_state = keras_reference(model, spec, seed, data, epochs=2)
        for got, want in zip(history, want_history, strict=True):
            assert got is not None
            assert_metrics_close(got[r], want, 1e-5)
        assert_states_close(packed.state(r), want_state, 1e-4)
        set_state(model, fresh_state(spec, seed))
        want_loss, want_acc = model.evaluate(data.x_test, data.targets(loss, "test"), verbose=0)
        assert before[r]["val_loss"] == pytest.approx(want_loss, rel=1e-5)
        assert before[r]["val_accuracy"] == pytest.approx(want_acc, abs=1e-6)


# ---- predictions: every replicate's outputs once per input array, until the weights change

@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
def test_predictions_are_computed_once_per_pack_and_follow_training(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec([8], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data(64, 40)
    trainer = PackedTrainer(spec, SEEDS, data, [None] * len(SEEDS))
    pack = trainer.packs[0]
    calls: list[int] = []
    real = keras_packed._Program.outputs

    def counted(self: Any, weights: Any, x: Any) -> Any:
        calls.append(1)
        return real(self, weights, x)

    monkeypatch.setattr(keras_packed._Program, "outputs", counted)

    def alone(r: int, x: np.ndarray) -> np.ndarray:  # the replicate's own standalone Keras model
        model = compiled_model(spec, SEEDS[r])
        set_state(model, trainer.state(r))
        return np.asarray(model.predict(x, verbose=0))

    got = [trainer.predict(r, data.x_test) for r in range(len(SEEDS))]
    assert len(calls) == 1  # one forward of the pack for its three replicates
    for r in range(len(SEEDS)):
        np.testing.assert_allclose(got[r], alone(r, data.x_test), rtol=1e-5, atol=1e-6)
    trainer.train_epoch(1, never)  # new weights: computed again
    after = trainer.predict(2, data.x_test)
    assert len(calls) == 2 and not np.allclose(after, got[2])
    np.testing.assert_allclose(after, alone(2, data.x_test), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(keras_packed, "EAGER_PREDICT_ROWS", 8)  # the compiled path, chunks padded
    trainer.chunk = 16
    other = data.x_test.copy()  # another array: its own entry
    np.testing.assert_allclose(trainer.predict(1, other), alone(1, other), rtol=1e-5, atol=1e-6)
    assert len(pack.outputs) == 2
    assert trainer.predict(0, np.zeros((0, 28, 28), np.float32)).shape == (0, 10)


# ---- devices: one pack per GPU, else one per CPU thread TensorFlow was given

@pytest.mark.slow
def test_one_pack_per_gpu_holds_every_replicate(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPUs seen (accelerators() is the seam: this machine has none, so TensorFlow's soft
    placement runs the GPU packs on its CPU), each GPU gets one pack and all of a trainer's
    replicates fill them; training is the same as one CPU pack's."""
    spec = make_spec([8], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data(64, 40)
    seeds = [*SEEDS, 99, 7]
    monkeypatch.setattr(keras_packed, "accelerators", lambda: ["/device:GPU:0"])
    assert keras_packed.pack_devices() == ["/device:GPU:0"] and keras_packed.pack_count() == 1
    on_gpu = PackedTrainer(spec, seeds, data, [None] * len(seeds), learning_rates=[0.01, 0.001, 0.003, 0.02, 0.005])
    assert [(p.r, p.device) for p in on_gpu.packs] == [(5, "/device:GPU:0")]
    monkeypatch.setattr(keras_packed, "accelerators", lambda: ["/device:GPU:0", "/device:GPU:1"])
    two = PackedTrainer(spec, seeds, data, [None] * len(seeds))
    assert [(p.r, p.device) for p in two.packs] == [(3, "/device:GPU:0"), (2, "/device:GPU:1")]
    monkeypatch.setattr(keras_packed, "accelerators", lambda: [])
    monkeypatch.setattr(keras_packed, "pack_count", lambda: 1)
    on_cpu = PackedTrainer(spec, seeds, data, [None] * len(seeds), learning_rates=[0.01, 0.001, 0.003, 0.02, 0.005])
    assert [(p.r, p.device) for p in on_cpu.packs] == [(5, None)]
    for got, want in ((on_gpu.train_epoch(1, never), on_cpu.train_epoch(1, never)),
                      (two.train_epoch(1, never), PackedTrainer(spec, seeds, data, [None] * 5).train_epoch(1, never))):
        assert got is not None and want is not None
        for r in range(len(seeds)):
            assert_metrics_close(got[r], want[r], 1e-6)


def test_cpu_packs_follow_tensorflows_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    monkeypatch.setattr(keras_packed, "accelerators", lambda: [])
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    for threads, packs in ((0, 4), (1, 1), (2, 2), (8, 4)):  # 0: TensorFlow decides, one per core
        monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda t=threads: t)
        assert keras_packed.pack_devices() == [None] * packs


def test_a_gpu_worker_claims_whole_configs_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings
    from worker.main import GPU_PACK_SIZE, with_device_pack_size

    default = Settings(trainer="keras")
    assert "pack_size" not in default.model_fields_set
    monkeypatch.setattr(keras_packed, "accelerators", lambda: [])
    assert with_device_pack_size(default).pack_size == default.pack_size  # a CPU keeps its default
    monkeypatch.setattr(keras_packed, "accelerators", lambda: ["/device:GPU:0"])
    assert with_device_pack_size(default).pack_size == GPU_PACK_SIZE == 256
    told = Settings(trainer="keras", pack_size=6)
    assert with_device_pack_size(told).pack_size == 6  # SWEEPLAB_PACK_SIZE / --pack-size win
    assert with_device_pack_size(Settings(trainer="fake")).pack_size == Settings(trainer="fake").pack_size


@pytest.mark.slow
@pytest.mark.usefixtures("one_pack")
def test_a_threads_replicates_train_in_cache_sized_blocks_as_one_pack_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Width 256 with Adam: 3.3 MB of weights, gradients and slots per replicate, more than
    CACHE_BLOCK_BYTES allows beside another, so a CPU thread's four replicates train in blocks of
    MIN_BLOCK (two), one after another; each block is rebuilt on its own as its replicates leave,
    and the results are one big pack's."""
    spec = make_spec([256], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data(64, 40)
    seeds = [*SEEDS, 99]
    blocked = PackedTrainer(spec, seeds, data, [None] * len(seeds))
    assert [(p.members, p.lane) for p in blocked.packs] == [([0, 1], 0), ([2, 3], 0)]
    monkeypatch.setattr(keras_packed, "CACHE_BLOCK_BYTES", 1 << 40)
    whole = PackedTrainer(spec, seeds, data, [None] * len(seeds))
    assert [p.members for p in whole.packs] == [[0, 1, 2, 3]]
    for epoch in (1, 2):
        got, want = blocked.train_epoch(epoch, never), whole.train_epoch(epoch, never)
        assert got is not None and want is not None and sorted(got) == sorted(want)
        for r in got:
            assert_metrics_close(got[r], want[r], 1e-6)
        blocked.drop(1)  # its block of two is rebuilt as one
        whole.drop(1)
    assert [p.members for p in blocked.packs] == [[0], [2, 3]]
    for r in (0, 2, 3):
        assert_states_close(blocked.state(r), whole.state(r), 1e-6)


@pytest.mark.usefixtures("one_pack")
def test_block_sizes_follow_the_cache_budget() -> None:
    """Adam's weights, gradients and two slots: width 64 is 0.82 MB a replicate, so ten make two
    blocks of five within 4 MiB; width 8 (0.1 MB) stays one block of ten."""
    data = make_data(40, 10)
    seeds = list(range(10))
    assert keras_packed.CACHE_BLOCK_BYTES == 4 << 20 and keras_packed.MIN_BLOCK == 2
    for width, blocks in ((64, [list(range(5)), list(range(5, 10))]), (8, [seeds])):
        trainer = PackedTrainer(make_spec([width], "softmax", "sparse_categorical_crossentropy", "adam"), seeds,
                                data, [None] * len(seeds))
        assert [p.members for p in trainer.packs] == blocks, width


@pytest.mark.slow
def test_saved_models_of_trained_replicates_are_each_their_own(tmp_path: Path) -> None:
    """save_keras reuses one Keras model for trained replicates: each file still holds its own
    weights, optimizer state and learning rate."""
    spec = make_spec([4], "softmax", "sparse_categorical_crossentropy", "adam")
    data = make_data(64, 10)
    trainer = PackedTrainer(spec, [1, 2, 3], data, [None] * 3, learning_rates=[0.02, 0.001, 0.005])
    trainer.train_epoch(1, never)
    for r in (2, 0, 1):
        trainer.save_keras(r, str(tmp_path / f"{r}.keras"))
    for r, rate in enumerate([0.02, 0.001, 0.005]):
        loaded = keras.saving.load_model(str(tmp_path / f"{r}.keras"))
        assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(rate)
        assert_states_close(get_state(loaded), trainer.state(r), 0)
