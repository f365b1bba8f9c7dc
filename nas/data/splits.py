"""Deterministic, stratified train / validation / test splits in plain numpy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from nas.data.sources import RawData
from nas.errors import DataError


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, h, w, c) raw pixels, as the source gave them
    y: np.ndarray  # (n,) int64 class indices

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    pixel_max: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.train.x.shape[1:]
        return int(h), int(w), int(c)

    def keep(self, *names: str) -> Splits:
        """The same splits with every split not named (of "train", "val", "test") emptied."""
        def kept(name: str, split: Split) -> Split:
            return split if name in names else Split(split.x[:0], split.y[:0])

        return replace(self, train=kept("train", self.train), val=kept("val", self.val), test=kept("test", self.test))

    def without_test(self) -> Splits:
        """What a trial may see: train and validation, with an empty test split."""
        return self.keep("train", "val")


def subset(split: Split, fraction: float, seed: int = 0) -> Split:
    """A class-stratified share of `split` for a cheap early rung: round(fraction x n) images of each class
    (at least one), in their original order. Subsets are nested (a 1/9 subset lies inside the 1/3 one: the
    same per-class permutation, cut shorter) and, with the fixed default seed, the same for every trial, so
    the trials of one rung are compared on the same images."""
    if fraction >= 1:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(split.y):
        idx = np.flatnonzero(split.y == c)
        keep.append(rng.permutation(idx)[:max(1, round(fraction * len(idx)))])
    chosen = np.sort(np.concatenate(keep))
    return Split(split.x[chosen], split.y[chosen])


def fingerprint(split: Split) -> str:
    """A short content hash of a split (pixels, their dtype and shape, and labels): two results whose test
    fingerprints are equal were measured on the same test images with the same labels."""
    h = hashlib.sha256()
    x, y = np.ascontiguousarray(split.x), np.ascontiguousarray(split.y, dtype=np.int64)
    h.update(f"{x.dtype.str}{x.shape}|".encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    return h.hexdigest()[:16]


def make_splits(raw: RawData, *, validation_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Split `raw` into train / val / test, the same way for the same seed (`data.split_seed`, never the
    search's seed: every search on the same data and split settings is scored on the same test split).

    The test split is the source's own when it has one; otherwise `test_fraction` of the training data, carved
    stratified. Validation is then `validation_fraction` of what remains (not of the whole). Each class with at
    least two samples left gets at least one sample on each side of a cut, so small classes appear in every
    split when they can; a class with a single sample stays in training.
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(len(raw.y_train))
    if raw.x_test is not None and raw.y_test is not None:
        test = Split(raw.x_test, raw.y_test)
    else:
        test_idx, pool = _carve(raw.y_train, pool, test_fraction, "test_fraction", "test", rng)
        test = Split(raw.x_train[test_idx], raw.y_train[test_idx])
    val_idx, train_idx = _carve(raw.y_train, pool, validation_fraction, "validation_fraction", "validation", rng)
    return Splits(
        train=Split(raw.x_train[train_idx], raw.y_train[train_idx]),
        val=Split(raw.x_train[val_idx], raw.y_train[val_idx]),
        test=test,
        class_names=raw.class_names,
        pixel_max=raw.pixel_max,
    )


def _carve(y: np.ndarray, pool: np.ndarray, fraction: float, key: str, name: str,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices `pool` into (carved, rest), about `fraction` carved from every class."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.{key} is {fraction}; expected a fraction strictly between 0 and 1, e.g. 0.1.")
    labels = y[pool]
    members = [pool[labels == c] for c in range(int(y.max()) + 1)]
    counts = np.array([len(m) for m in members])
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    # Largest remainders first, so the carved total is round(fraction * n) before the per-class minimums below.
    short = int(round(fraction * len(pool))) - int(take.sum())
    if short > 0:
        take[np.argsort(take - quota, kind="stable")[:short]] += 1
    take = np.where(counts >= 2, np.clip(take, 1, counts - 1), 0)
    carved, rest = [], []
    for m, k in zip(members, take, strict=True):
        shuffled = rng.permutation(m)
        carved.append(shuffled[:k])
        rest.append(shuffled[k:])
    carved_idx, rest_idx = np.sort(np.concatenate(carved)), np.sort(np.concatenate(rest))
    if len(carved_idx) == 0:  # only when no class has two samples: any class with two gives one to each side
        raise DataError(f"data.{key}={fraction} on {len(pool)} samples in {int((counts > 0).sum())} classes with at "
                        f"most {int(counts.max())} sample per class: the {name} split would be empty whatever the "
                        f"fraction. Each class needs at least 2 samples here (3 when the source has no own test "
                        "split): add data.")
    return carved_idx, rest_idx
