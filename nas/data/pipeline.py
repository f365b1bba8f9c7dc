"""Batches for the trial worker: (float32 raw pixels, one-hot float32 labels), on every Keras framework.

TensorFlow gets tf.data pipelines (prefetched in C++ threads); JAX and PyTorch get numpy batches (an endless
generator to train, a keras.utils.PyDataset to evaluate), so neither needs TensorFlow. Both paths gather the
same samples in the same order.

Pixels are not rescaled: the model starts with a Rescaling layer, so an exported model takes raw pixels.
Augmentation is not here but in the training step (nas.augment), where it runs on the device on any backend.
The order of the training samples in epoch e is a function of (seed, e) alone (`epoch_order`), so a trial
resumed at epoch e from its checkpoint sees exactly the batches it would have seen training straight through.
No `cache()`: the in-memory arrays are already a cache.

Whole batches (`whole=True`, for a training step XLA compiles: always on JAX, on TensorFlow with jit_compile):
XLA compiles once per batch shape, so a last partial batch costs a second compile of the train step and of the
evaluation step in every trial. Training then drops the last partial batch of each epoch (a different few
samples each epoch, as the order is shuffled; padding it instead would put the pads into BatchNorm's batch
statistics), and evaluation pads its last batch with copies of real images weighted 0: accuracy is exact, and
the mean loss is `padded / len` times too small, which `Padding.loss_scale` undoes.
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


def steps_per_epoch(n: int, batch_size: int, whole: bool = False) -> int:
    """Training batches in an epoch of `n` samples: the last partial one dropped when `whole` (unless it is the
    only one)."""
    return max(1, n // batch_size) if whole else -(-n // batch_size)


def train_batches(split: Split, *, num_classes: int, batch_size: int, seed: int, first_epoch: int = 0,
                  whole: bool = False) -> TrainBatches:
    """Shuffled batches (every sample once per epoch, a new order each epoch), from epoch `first_epoch` on;
    `whole`: every batch full (see the module's docstring)."""
    n = len(split.y)
    steps = steps_per_epoch(n, batch_size, whole)
    if not _on_tensorflow():
        return TrainBatches(_numpy_batches(split, num_classes, batch_size, seed, first_epoch, steps), steps)
    import tensorflow as tf

    x, y = tf.constant(split.x), tf.constant(split.y)

    def order(epoch: tf.Tensor) -> tf.data.Dataset:
        idx = tf.numpy_function(lambda e: epoch_order(n, seed, int(e)), [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(idx, [n])).batch(batch_size).take(steps)

    def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # one vectorised gather/cast per batch
        return tf.cast(tf.gather(x, idx), tf.float32), tf.one_hot(tf.gather(y, idx), num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(order)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return TrainBatches(ds.prefetch(tf.data.AUTOTUNE), steps)


def _numpy_batches(split: Split, num_classes: int, batch_size: int, seed: int, first_epoch: int,
                   steps: int | None = None) -> Iterator[Any]:
    """`steps` batches per epoch (default: every sample, the last batch partial)."""
    eye = np.eye(num_classes, dtype=np.float32)
    n, epoch = len(split.y), first_epoch
    steps = steps_per_epoch(n, batch_size) if steps is None else steps
    while True:
        order = epoch_order(n, seed, epoch)
        for start in range(0, steps * batch_size, batch_size):
            idx = order[start:start + batch_size]
            yield split.x[idx].astype(np.float32), eye[split.y[idx]]
        epoch += 1


class Padding(NamedTuple):
    """An evaluation split padded to whole batches: `samples` real ones, `padded` in all."""

    samples: int
    padded: int

    @property
    def loss_scale(self) -> float:
        """What the mean loss Keras reports on the padded split is multiplied by to be the real split's: Keras
        divides each batch's weighted loss sum by the batch's size (sum_over_batch_size) and averages batches
        by their size, so the pads, weighted 0, only add to the divisor."""
        return self.padded / self.samples if self.samples else 1.0


def padding(n: int, batch_size: int, whole: bool) -> Padding:
    return Padding(n, -(-n // batch_size) * batch_size if whole and n else n)


def _padded(split: Split, pad: Padding) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images, labels, weights) with the pads appended: copies of the first images (a split smaller than a batch
    repeats itself), weighted 0; weights None when nothing is padded."""
    if pad.padded == pad.samples:
        return split.x, split.y, None
    copies = np.arange(pad.padded - pad.samples) % pad.samples
    weights = np.concatenate([np.ones(pad.samples, np.float32), np.zeros(len(copies), np.float32)])
    return np.concatenate([split.x, split.x[copies]]), np.concatenate([split.y, split.y[copies]]), weights


class _EvalBatches(keras.utils.PyDataset):
    """In order, numpy: what JAX and PyTorch evaluate on (re-iterable, unlike a generator); with `pad`, the last
    batch is filled up with copies of the first images, and every batch carries sample weights (0 for the pads)."""

    def __init__(self, split: Split, num_classes: int, batch_size: int, pad: Padding):
        super().__init__()
        self.batch_size, self.eye = batch_size, np.eye(num_classes, dtype=np.float32)
        self.x, self.y, self.weights = _padded(split, pad)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        batch = self.x[s].astype(np.float32), self.eye[self.y[s]]
        return batch if self.weights is None else (*batch, self.weights[s])


def eval_dataset(split: Split, *, num_classes: int, batch_size: int, whole: bool = False) -> Any:
    """In order, no augmentation: batched, cast, one-hot (prefetched on TensorFlow); `whole`: every batch full,
    the pads weighted 0 (see `padding` for the size, `Padding.loss_scale` for the loss)."""
    pad = padding(len(split.y), batch_size, whole)
    if not _on_tensorflow():
        return _EvalBatches(split, num_classes, batch_size, pad)
    import tensorflow as tf

    def prepare(x: tf.Tensor, y: tf.Tensor, *w: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return (tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32), *w)

    x, y, weights = _padded(split, pad)
    ds = tf.data.Dataset.from_tensor_slices((x, y) if weights is None else (x, y, weights)).batch(batch_size)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
