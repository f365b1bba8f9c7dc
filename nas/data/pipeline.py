"""Batches for the trial worker: (float32 raw pixels, one-hot float32 labels), on every Keras framework.

TensorFlow gets tf.data pipelines (prefetched in C++ threads); JAX and PyTorch get numpy batches (an endless
generator to train, a keras.utils.PyDataset to evaluate), so neither needs TensorFlow. Both paths gather the
same samples in the same order.

Pixels are not rescaled: the model starts with a Rescaling layer, so an exported model takes raw pixels.
Augmentation is not here but in the training step (nas.augment), where it runs on the device on any backend.
The order of the training samples in epoch e is a function of (seed, e) alone (`epoch_order`), so a trial
resumed at epoch e from its checkpoint sees exactly the batches it would have seen training straight through.
No `cache()`: the in-memory arrays are already a cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import keras
import numpy as np

from nas.data.splits import Split


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of `n` training samples in `epoch`: the same on every run, resume and backend."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)


class TrainBatches(NamedTuple):
    dataset: Any  # endless (a tf.data.Dataset or a generator): epoch after epoch; fit it with steps_per_epoch
    steps_per_epoch: int


def _on_tensorflow() -> bool:
    return bool(keras.backend.backend() == "tensorflow")


def train_batches(split: Split, *, num_classes: int, batch_size: int, seed: int, first_epoch: int = 0) -> TrainBatches:
    """Shuffled batches (every sample once per epoch, a new order each epoch), from epoch `first_epoch` on."""
    n = len(split.y)
    if not _on_tensorflow():
        return TrainBatches(_numpy_batches(split, num_classes, batch_size, seed, first_epoch), -(-n // batch_size))
    import tensorflow as tf

    x, y = tf.constant(split.x), tf.constant(split.y)

    def order(epoch: tf.Tensor) -> tf.data.Dataset:
        idx = tf.numpy_function(lambda e: epoch_order(n, seed, int(e)), [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(idx, [n])).batch(batch_size)

    def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # one vectorised gather/cast per batch
        return tf.cast(tf.gather(x, idx), tf.float32), tf.one_hot(tf.gather(y, idx), num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(order)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return TrainBatches(ds.prefetch(tf.data.AUTOTUNE), -(-n // batch_size))


def _numpy_batches(split: Split, num_classes: int, batch_size: int, seed: int, first_epoch: int) -> Iterator[Any]:
    eye = np.eye(num_classes, dtype=np.float32)
    n, epoch = len(split.y), first_epoch
    while True:
        order = epoch_order(n, seed, epoch)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield split.x[idx].astype(np.float32), eye[split.y[idx]]
        epoch += 1


class _EvalBatches(keras.utils.PyDataset):
    """In order, numpy: what JAX and PyTorch evaluate on (re-iterable, unlike a generator)."""

    def __init__(self, split: Split, num_classes: int, batch_size: int):
        super().__init__()
        self.split, self.batch_size, self.eye = split, batch_size, np.eye(num_classes, dtype=np.float32)

    def __len__(self) -> int:
        return -(-len(self.split.y) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.split.x[s].astype(np.float32), self.eye[self.split.y[s]]


def eval_dataset(split: Split, *, num_classes: int, batch_size: int) -> Any:
    """In order, no augmentation: batched, cast, one-hot (prefetched on TensorFlow)."""
    if not _on_tensorflow():
        return _EvalBatches(split, num_classes, batch_size)
    import tensorflow as tf

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(batch_size)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
