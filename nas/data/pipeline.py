"""tf.data pipelines for the trial worker: batches of (float32 raw pixels, one-hot float32 labels).

Pixels are not rescaled: the model starts with a Rescaling layer, so an exported model takes raw pixels.
Augmentation lives only here, never in a model: augmentation layers break SavedModel/TFLite/ONNX export and
turn off XLA. No `cache()`: `from_tensor_slices` on in-memory arrays is already a cache, and caching again
would keep a second copy (a float32 one if cached after the cast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from nas.data.splits import Split

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("reflect", "constant", "nearest", "wrap")


@dataclass(frozen=True)
class Augmentation:
    """Random training-time transforms; factors as in keras.layers.Random* (0 switches one off)."""

    flip: str = "none"  # none | horizontal | vertical | horizontal_and_vertical
    rotation: float = 0.0  # fraction of a full turn, as keras.layers.RandomRotation's factor
    translation: float = 0.0  # fraction of height/width
    zoom: float = 0.0  # fraction
    contrast: float = 0.0  # factor
    fill_mode: str = "reflect"  # reflect | constant | nearest | wrap

    def __post_init__(self) -> None:
        # The spec validates these first; this guards direct construction with a message that quotes the value.
        if self.flip not in FLIP_MODES:
            raise ValueError(f"Augmentation.flip must be one of {FLIP_MODES}, but got {self.flip!r}.")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"Augmentation.fill_mode must be one of {FILL_MODES}, but got {self.fill_mode!r}.")
        for name, upper in (("rotation", 1.0), ("translation", 1.0), ("zoom", 1.0), ("contrast", 1.0)):
            value = getattr(self, name)
            if not 0.0 <= value <= upper:
                raise ValueError(f"Augmentation.{name} must satisfy 0 <= {name} <= {upper}, but got {value}.")

    @property
    def active(self) -> bool:
        return self.flip != "none" or any((self.rotation, self.translation, self.zoom, self.contrast))


def augmenter(augmentation: Augmentation, *, pixel_max: float, seed: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function that applies the active transforms to a batch (n, h, w, c) of float32 pixels.

    Each layer gets its own seed, derived from `seed`. dtype float32 is pinned so a global mixed-precision
    policy does not turn the data into float16.
    """
    a = augmentation
    layers: list[keras.layers.Layer] = []
    if a.flip != "none":
        layers.append(keras.layers.RandomFlip(a.flip, seed=seed, dtype="float32"))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, fill_mode=a.fill_mode, seed=seed + 1, dtype="float32"))
    if a.translation:
        layers.append(keras.layers.RandomTranslation(a.translation, a.translation, fill_mode=a.fill_mode,
                                                     seed=seed + 2, dtype="float32"))
    if a.zoom:  # width_factor=None keeps the aspect ratio
        layers.append(keras.layers.RandomZoom(a.zoom, fill_mode=a.fill_mode, seed=seed + 3, dtype="float32"))
    if a.contrast:  # value_range must match the raw pixels, else contrast clips everything to [0, 255]
        layers.append(keras.layers.RandomContrast(a.contrast, value_range=(0, pixel_max), seed=seed + 4,
                                                  dtype="float32"))

    def apply(images: tf.Tensor) -> tf.Tensor:
        for layer in layers:
            images = layer(images, training=True)
        return images

    return apply


def train_dataset(split: Split, *, num_classes: int, batch_size: int, augmentation: Augmentation,
                  pixel_max: float, seed: int) -> tf.data.Dataset:
    """Shuffled (seeded, reshuffled every epoch), batched, augmented, prefetched.

    Reproducible batch for batch under `keras.utils.set_random_seed` + `tf.config.experimental.
    enable_op_determinism()`; without the determinism flag the parallel augmentation map is not.
    """
    augment = augmenter(augmentation, pixel_max=pixel_max, seed=seed) if augmentation.active else None

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)
        return (augment(x) if augment else x), tf.one_hot(y, num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    ds = ds.shuffle(len(split.y), seed=seed, reshuffle_each_iteration=True)
    # Batch first: one vectorised cast/augment per batch is far cheaper than one per image.
    ds = ds.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split: Split, *, num_classes: int, batch_size: int) -> tf.data.Dataset:
    """In order, no augmentation: batched, cast, one-hot, prefetched."""

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(batch_size)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
