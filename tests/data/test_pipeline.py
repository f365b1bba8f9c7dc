"""Training batches (epoch-indexed seeded order), eval batches, and augmentation in the training wrapper."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nas.augment import Augmentation, augmentation_layers, for_training
from nas.data.pipeline import _EvalBatches, epoch_order, eval_dataset, padding, steps_per_epoch, train_batches
from nas.data.sources import load_source
from nas.data.splits import Split, make_splits

ALL = Augmentation(flip="horizontal", rotation=0.1, translation=0.1, zoom=0.1, contrast=0.3)


@pytest.fixture(scope="module")
def train() -> Split:
    raw = load_source("digits", Path("."))
    return make_splits(raw, validation_fraction=0.1, test_fraction=0.2, seed=0).train


def epoch(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:  # a finite dataset, one pass
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds))
    return np.concatenate(xs), np.concatenate(ys)


def epochs(split: Split, n: int, *, seed: int = 3, first_epoch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `n` epochs of an endless train_batches stream, each as (images, one-hot labels)."""
    b = train_batches(split, num_classes=10, batch_size=32, seed=seed, first_epoch=first_epoch)
    it = iter(b.dataset)
    out = []
    for _ in range(n):
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in (next(it) for _ in range(b.steps_per_epoch))))
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def augment(images: np.ndarray, augmentation: Augmentation, seed: int = 1, calls: int = 1) -> list[np.ndarray]:
    layers = augmentation_layers(augmentation, pixel_max=16.0, seed=seed)
    out = []
    for _ in range(calls):
        x = keras.ops.convert_to_tensor(images.astype(np.float32))
        for layer in layers:
            x = layer(x, training=True)
        out.append(keras.ops.convert_to_numpy(x))
    return out


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


def labelled(n: int = 200) -> Split:
    y = np.arange(n) % 10
    return Split(x=np.repeat(y, 4).reshape(n, 2, 2, 1).astype(np.uint8), y=y)  # each image shows its label


def test_train_batches_shuffle_each_epoch_and_keep_pairs() -> None:
    split = labelled()
    (x1, y1), (x2, y2) = epochs(split, 2)
    assert x1.dtype == np.float32 and y1.shape == (200, 10)
    np.testing.assert_array_equal(x1[:, 0, 0, 0], y1.argmax(1))  # image and label still together
    np.testing.assert_array_equal(np.sort(y1.argmax(1)), np.sort(split.y))  # every sample once per epoch
    assert not np.array_equal(y1.argmax(1), split.y) and not np.array_equal(y1, y2)  # shuffled, and reshuffled
    assert train_batches(split, num_classes=10, batch_size=32, seed=3).steps_per_epoch == 7  # last batch kept


def test_whole_batches_drop_each_epochs_last_partial_batch() -> None:
    """For XLA-compiled steps: one batch shape only. The kept samples are the head of the epoch's order."""
    split = labelled()
    assert steps_per_epoch(200, 32, whole=True) == 6 and steps_per_epoch(200, 32) == 7
    assert steps_per_epoch(20, 32, whole=True) == 1  # a split smaller than a batch: its one partial batch
    b = train_batches(split, num_classes=10, batch_size=32, seed=3, whole=True)
    assert b.steps_per_epoch == 6
    it = iter(b.dataset)
    for e in range(2):  # across an epoch boundary
        batches = [next(it) for _ in range(6)]
        assert [int(y.shape[0]) for _, y in batches] == [32] * 6
        labels = np.concatenate([y.numpy().argmax(1) for _, y in batches])
        np.testing.assert_array_equal(labels, split.y[epoch_order(200, 3, e)[:192]])


def test_eval_padding_fills_the_last_batch_with_copies_that_weigh_nothing(train: Split) -> None:
    n = len(train.y)
    pad = padding(n, 100, whole=True)
    assert pad.samples == n and pad.padded == -(-n // 100) * 100 > n and pad.loss_scale == pad.padded / n
    assert padding(n, 100, whole=False).padded == n and padding(300, 100, whole=True).loss_scale == 1.0
    tf_batches = [tuple(t.numpy() for t in b) for b in eval_dataset(train, num_classes=10, batch_size=100, whole=True)]
    np_batches = [_EvalBatches(train, 10, 100, pad)[i] for i in range(len(_EvalBatches(train, 10, 100, pad)))]
    for batches in (tf_batches, np_batches):  # TensorFlow's tf.data, and the numpy batches of JAX and PyTorch
        assert all(len(b) == 3 and len(b[0]) == 100 for b in batches)  # (x, y, weights), every batch whole
        x, y, w = (np.concatenate(parts) for parts in zip(*batches))
        np.testing.assert_array_equal(x[:n], train.x.astype(np.float32))  # in order, then the pads
        np.testing.assert_array_equal(y[:n].argmax(1), train.y)
        np.testing.assert_array_equal(w, np.r_[np.ones(n), np.zeros(pad.padded - n)])
    tiny = Split(train.x[:10], train.y[:10])  # fewer samples than one batch: the pads repeat them
    x, y, w = _EvalBatches(tiny, 10, 32, padding(10, 32, whole=True))[0]
    assert len(x) == 32 and w.sum() == 10
    np.testing.assert_array_equal(y.argmax(1), tiny.y[np.arange(32) % 10])


def test_a_padded_evaluation_gives_the_unpadded_accuracy_and_loss(train: Split) -> None:
    """The pads must not change a metric: accuracy is weighted, and the loss is scaled back (Padding.loss_scale)."""
    from nas.space import TrainConfig
    from nas.train import compile_for_training

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 16), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    cfg = TrainConfig(epochs=2, optimizer="adam", learning_rate=1e-2, weight_decay=0.0, momentum=0.9, batch_size=32,
                      label_smoothing=0.1, early_stopping=None, deterministic=True, augment={})
    compile_for_training(model, cfg, steps_per_epoch=1, epochs=1)
    model.fit(train.x.astype(np.float32), keras.utils.to_categorical(train.y, 10), epochs=2, verbose=0)
    plain = model.evaluate(eval_dataset(train, num_classes=10, batch_size=100), return_dict=True, verbose=0)
    padded = model.evaluate(eval_dataset(train, num_classes=10, batch_size=100, whole=True), return_dict=True,
                            verbose=0)
    assert 0.2 < plain["accuracy"] < 1.0  # a model between chance and perfect, so the pads could show
    assert padded["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-7)
    assert padded["loss"] != pytest.approx(plain["loss"], rel=1e-3)  # unscaled, the pads would bias it ...
    scale = padding(len(train.y), 100, whole=True).loss_scale
    assert padded["loss"] * scale == pytest.approx(plain["loss"], rel=1e-5)  # ... which the scale undoes


def test_an_epochs_order_depends_on_the_seed_and_the_epoch_alone() -> None:
    """What makes a resumed trial exact: starting at epoch 2 gives the batches epoch 2 had in a run from 0."""
    split = labelled()
    straight = epochs(split, 3)
    resumed = epochs(split, 1, first_epoch=2)
    np.testing.assert_array_equal(resumed[0][1], straight[2][1])
    np.testing.assert_array_equal(epoch_order(200, 3, 2), epoch_order(200, 3, 2))
    assert not np.array_equal(epoch_order(200, 3, 2), epoch_order(200, 4, 2))  # and the seed matters


@pytest.mark.parametrize("augmentation", [
    Augmentation(flip="horizontal"), Augmentation(rotation=0.2), Augmentation(translation=0.2),
    Augmentation(zoom=0.3), Augmentation(contrast=0.5), Augmentation(zoom=0.3, fill_mode="constant"),
], ids=["flip", "rotation", "translation", "zoom", "contrast", "zoom-constant"])
def test_each_augmentation_changes_images_within_pixel_range(train: Split, augmentation: Augmentation) -> None:
    x0 = train.x[:256].astype(np.float32)
    (x1,) = augment(x0, augmentation)
    assert x1.shape == x0.shape and x1.dtype == np.float32
    changed = np.any(x1 != x0, axis=(1, 2, 3)).mean()
    assert 0.2 < changed  # most images are transformed ...
    assert 0.0 <= x1.min() and x1.max() <= 16.0 + 1e-4  # ... and stay in [0, pixel_max] (contrast's value_range)
    if augmentation.flip == "horizontal":  # each image is either itself or its mirror
        mirrored = np.all(x1 == x0[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(mirrored | np.all(x1 == x0, axis=(1, 2, 3))) and 0.2 < mirrored.mean() < 0.8


@pytest.mark.usefixtures("deterministic_ops")
def test_same_seeds_give_identical_augmentation_and_each_call_draws_anew(train: Split) -> None:
    x0 = train.x[:128].astype(np.float32)
    first, again = augment(x0, ALL, seed=5, calls=2), augment(x0, ALL, seed=5, calls=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # same seed: bit-identical
    changed = np.any(first[0] != first[1], axis=(1, 2, 3))
    assert changed.mean() > 0.9, f"only {changed.mean():.0%} of the images were augmented differently the 2nd time"
    assert not np.array_equal(augment(x0, ALL, seed=6)[0], first[0])  # and the seed matters


def test_the_training_wrapper_augments_in_training_only_and_trains_the_models_own_weights(train: Split) -> None:
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    assert for_training(model, Augmentation(), pixel_max=16.0, seed=0) is model  # nothing to add
    trainer = for_training(model, ALL, pixel_max=16.0, seed=0)
    x = train.x[:64].astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trainer(x, training=False)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))  # inference: the model alone
    assert not np.allclose(keras.ops.convert_to_numpy(trainer(x, training=True)),
                           keras.ops.convert_to_numpy(model(x, training=True)))
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in trainer.trainable_variables}
    assert not any(layer.__class__.__name__.startswith("Random") for layer in model.layers)


def test_augmentation_validates_and_reports_active() -> None:
    assert not Augmentation().active
    assert Augmentation(flip="vertical").active and Augmentation(contrast=0.1).active
    with pytest.raises(ValueError, match=r"flip must be one of .*but got 'sideways'"):
        Augmentation(flip="sideways")
    with pytest.raises(ValueError, match=r"fill_mode must be one of .*but got 'mirror'"):
        Augmentation(fill_mode="mirror")
    with pytest.raises(ValueError, match=r"0 <= zoom <= 1.0, but got -0.1"):
        Augmentation(zoom=-0.1)
