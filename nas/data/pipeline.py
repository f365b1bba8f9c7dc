"""tf.data pipelines for the trial worker: batches of (float32 raw pixels, one-hot float32 labels).

Pixels are not rescaled: the model starts with a Rescaling layer, so an exported model takes raw pixels.
Augmentation is not here but in the training step (nas.augment), where it runs on the device on any backend.
The order of the training samples in epoch e is a function of (seed, e) alone (`epoch_order`), so a trial
resumed at epoch e from its checkpoint sees exactly the batches it would have seen training straight through.
No `cache()`: the in-memory arrays are already a cache.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from nas.data.splits import Split


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of `n` training samples in `epoch`: the same on every run, resume and backend."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)


class TrainBatches(NamedTuple):
    dataset: tf.data.Dataset  # endless: epoch after epoch from its first; fit it with steps_per_epoch
    steps_per_epoch: int


def train_batches(split: Split, *, num_classes: int, batch_size: int, seed: int, first_epoch: int = 0) -> TrainBatches:
    """Shuffled batches (every sample once per epoch, a new order each epoch), from epoch `first_epoch` on."""
    n = len(split.y)
    x, y = tf.constant(split.x), tf.constant(split.y)

    def order(epoch: tf.Tensor) -> tf.data.Dataset:
        idx = tf.numpy_function(lambda e: epoch_order(n, seed, int(e)), [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(idx, [n])).batch(batch_size)

    def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # one vectorised gather/cast per batch
        return tf.cast(tf.gather(x, idx), tf.float32), tf.one_hot(tf.gather(y, idx), num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(order)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return TrainBatches(ds.prefetch(tf.data.AUTOTUNE), -(-n // batch_size))


def eval_dataset(split: Split, *, num_classes: int, batch_size: int) -> tf.data.Dataset:
    """In order, no augmentation: batched, cast, one-hot, prefetched."""

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(batch_size)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
