"""A packed trainer's inputs: images stored as its XLA loops read them (encode_rows, decode_rows:
the exact uint8 bytes, packed into 64-bit words where a row allows) and a prepared dataset's
tensors on a device, made once and shared by every pack (device_inputs). Re-exported by
worker.keras_packed."""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from worker.trainer import PreparedData


def encode_rows(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Images (N, ...) as float32 as the packed loops store them: flat rows of the exact uint8 bytes
    when every value is a uint8 divided by 255 (as PreparedData scales uint8 images), packed into
    64-bit words when a row's byte count allows (XLA's gather loop costs per element: MNIST's rows
    become 98 words instead of 784 floats); any other data as flat float32 rows. Checked CHUNK
    rows at a time (in cache: ~0.3 CPU-s for MNIST's training set, once per worker)."""
    flat = np.ascontiguousarray(np.asarray(x, np.float32).reshape(len(x), -1))
    as_bytes = np.empty(flat.shape, np.uint8)
    for start in range(0, len(flat), chunk):
        rows = flat[start:start + chunk]
        scaled = rows * np.float32(255)
        if not (np.all(scaled >= 0) and np.all(scaled <= 255)):  # NaN fails too
            return flat
        np.rint(scaled, out=scaled)
        as_bytes[start:start + chunk] = scaled
        if not np.array_equal(as_bytes[start:start + chunk].astype(np.float32) / np.float32(255), rows):
            return flat
    if flat.size and flat.shape[1] % 8 == 0:
        words: np.ndarray = as_bytes.view(np.uint64)  # C-contiguous rows: each row's 8-byte words
        return words
    return as_bytes if flat.size else flat


def decode_rows(x: tf.Tensor, features: int) -> tf.Tensor:
    """Rows as encode_rows stored them, back to float32 (..., features), bit for bit the prepared
    data's float32(byte) / 255 (numpy's correctly rounded division). XLA turns a division by a
    constant into a product with its float32 reciprocal (1 ulp off for some bytes), so the quotient
    is taken in float64 and rounded once to float32: its error (~2^-52) is far below the distance of
    any byte / 255 from a float32 rounding boundary (>= 2^-33: b / 255 is never a midpoint), so the
    rounding is the correct one (the tests check all 256 bytes)."""
    if x.dtype == tf.float32:
        return x
    if x.dtype == tf.uint64:
        x = tf.reshape(tf.bitcast(x, tf.uint8), [*x.shape[:-1], features])
    return tf.cast(tf.cast(x, tf.float64) * (1.0 / 255.0), tf.float32)


_inputs_held: dict[tuple[int, str | None], tuple[PreparedData, tuple[tf.Tensor, ...]]] = {}
_inputs_lock = threading.Lock()


def device_inputs(data: PreparedData, device: str | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """DATA's x_train, y_train, x_test, y_test as tensors on DEVICE (encode_rows' form), made once
    per prepared dataset and device and shared by every pack: converting MNIST took ~0.7 CPU-s a
    pack. Only the latest dataset's tensors are held."""
    key = (id(data), device)
    with _inputs_lock:
        held = _inputs_held.get(key)
        if held is None or held[0] is not data:
            for old in [k for k, (d, _) in _inputs_held.items() if d is not data]:
                del _inputs_held[old]
            with tf.device(device):
                tensors = (tf.constant(encode_rows(data.x_train)), tf.constant(data.y_train, tf.int32),
                           tf.constant(encode_rows(data.x_test)), tf.constant(data.y_test, tf.int32))
            _inputs_held[key] = held = (data, tensors)
    x_train, y_train, x_test, y_test = held[1]
    return x_train, y_train, x_test, y_test
