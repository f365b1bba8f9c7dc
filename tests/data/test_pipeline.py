"""tf.data pipelines: raw float32 pixels, one-hot labels, seeded shuffling and augmentation, reproducibility."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from nas.data.pipeline import Augmentation, eval_dataset, train_dataset
from nas.data.sources import load_source
from nas.data.splits import Split, make_splits

ALL = Augmentation(flip="horizontal", rotation=0.1, translation=0.1, zoom=0.1, contrast=0.3)


@pytest.fixture(scope="module")
def train() -> Split:
    raw = load_source("digits", Path("."))
    return make_splits(raw, validation_fraction=0.1, test_fraction=0.2, seed=0).train


@pytest.fixture
def deterministic_ops() -> Iterator[None]:
    """Op determinism for one test; restored after so other tests run as they would alone."""
    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was:
        tf_config.disable_op_determinism()


def epoch(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds))
    return np.concatenate(xs), np.concatenate(ys)


def batches(train: Split, augmentation: Augmentation, seed: int = 1, epochs: int = 2) -> list[np.ndarray]:
    ds = train_dataset(train, num_classes=10, batch_size=64, augmentation=augmentation, pixel_max=16.0, seed=seed)
    return [x.numpy() for _ in range(epochs) for x, _ in ds]


def test_eval_dataset_keeps_order_and_raw_pixels(train: Split) -> None:
    ds = eval_dataset(train, num_classes=10, batch_size=100)
    sizes = [len(y) for _, y in ds]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and sum(sizes) == len(train.y)  # last batch kept
    x, y = epoch(ds)
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (len(train.y), 10)
    np.testing.assert_array_equal(x, train.x.astype(np.float32))  # not rescaled: the model's Rescaling does it
    np.testing.assert_array_equal(y.argmax(1), train.y)
    assert np.all(y.sum(1) == 1)  # one-hot; label smoothing belongs to the loss
    np.testing.assert_array_equal(epoch(ds)[0], x)  # same order every pass


def test_train_dataset_shuffles_each_epoch_and_keeps_pairs() -> None:
    y = np.arange(200) % 10
    split = Split(x=np.repeat(y, 4).reshape(200, 2, 2, 1).astype(np.uint8), y=y)  # each image shows its label
    ds = train_dataset(split, num_classes=10, batch_size=32, augmentation=Augmentation(), pixel_max=255.0, seed=3)
    (x1, y1), (x2, y2) = epoch(ds), epoch(ds)
    assert x1.dtype == np.float32 and y1.shape == (200, 10)
    np.testing.assert_array_equal(x1[:, 0, 0, 0], y1.argmax(1))  # image and label still together
    np.testing.assert_array_equal(np.sort(y1.argmax(1)), np.sort(y))  # every sample once per epoch
    assert not np.array_equal(y1.argmax(1), y) and not np.array_equal(y1, y2)  # shuffled, and reshuffled


@pytest.mark.parametrize("augmentation", [
    Augmentation(flip="horizontal"), Augmentation(rotation=0.2), Augmentation(translation=0.2),
    Augmentation(zoom=0.3), Augmentation(contrast=0.5), Augmentation(zoom=0.3, fill_mode="constant"),
], ids=["flip", "rotation", "translation", "zoom", "contrast", "zoom-constant"])
def test_each_augmentation_changes_images_within_pixel_range(train: Split, augmentation: Augmentation) -> None:
    plain, augmented = batches(train, Augmentation(), epochs=1), batches(train, augmentation, epochs=1)
    x0, x1 = np.concatenate(plain), np.concatenate(augmented)  # same seed, so the same shuffled order
    assert x1.shape == x0.shape and x1.dtype == np.float32
    changed = np.any(x1 != x0, axis=(1, 2, 3)).mean()
    assert 0.2 < changed  # most images are transformed ...
    assert 0.0 <= x1.min() and x1.max() <= 16.0 + 1e-4  # ... and stay in [0, pixel_max] (contrast's value_range)
    if augmentation.flip == "horizontal":  # each image is either itself or its mirror
        mirrored = np.all(x1 == x0[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(mirrored | np.all(x1 == x0, axis=(1, 2, 3))) and 0.2 < mirrored.mean() < 0.8


@pytest.mark.usefixtures("deterministic_ops")
def test_same_seeds_give_identical_batches(train: Split) -> None:
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        runs.append(batches(train, ALL, seed=5, epochs=2))
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))  # two runs, both epochs, bit-identical
    keras.utils.set_random_seed(5)
    assert not np.array_equal(batches(train, ALL, seed=6, epochs=1)[0], runs[0][0])  # and the seed matters


@pytest.mark.usefixtures("deterministic_ops")
def test_each_epoch_gets_fresh_augmentation_not_only_a_new_order(train: Split) -> None:
    """Every training image is the same picture, so the shuffled order cannot change what a batch holds:
    any difference between epochs is the augmentation, drawn anew."""
    one = Split(x=np.repeat(train.x[:1], 128, axis=0), y=np.arange(128) % 10)
    keras.utils.set_random_seed(5)
    plain = batches(one, Augmentation(), seed=5, epochs=2)
    assert np.array_equal(plain[0], plain[2]) and np.array_equal(plain[1], plain[3])  # the control: no change
    keras.utils.set_random_seed(5)
    first, second = np.split(np.concatenate(batches(one, ALL, seed=5, epochs=2)), 2)
    assert not np.array_equal(first[0], train.x[0].astype(np.float32))  # augmented at all
    changed = np.any(first != second, axis=(1, 2, 3))
    assert changed.mean() > 0.9, f"only {changed.mean():.0%} of the images were augmented differently in epoch 2"


def test_augmentation_validates_and_reports_active() -> None:
    assert not Augmentation().active
    assert Augmentation(flip="vertical").active and Augmentation(contrast=0.1).active
    with pytest.raises(ValueError, match=r"flip must be one of .*but got 'sideways'"):
        Augmentation(flip="sideways")
    with pytest.raises(ValueError, match=r"fill_mode must be one of .*but got 'mirror'"):
        Augmentation(fill_mode="mirror")
    with pytest.raises(ValueError, match=r"0 <= zoom <= 1.0, but got -0.1"):
        Augmentation(zoom=-0.1)
