"""make_splits: deterministic, disjoint, stratified; the source's own test split wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.data.sources import RawData, load_source
from nas.data.splits import Splits, make_splits
from nas.errors import DataError


def indexed(labels: list[int] | np.ndarray, *, test_labels: list[int] | None = None) -> RawData:
    """Each image holds its own index, so a split's members can be read back from x."""
    y = np.asarray(labels, dtype=np.int64)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    x_test = None if test_labels is None else np.full((len(test_labels), 1, 1, 1), -1.0, np.float32)
    y_test = None if test_labels is None else np.asarray(test_labels, dtype=np.int64)
    names = tuple(str(i) for i in range(int(y.max()) + 1))
    return RawData(x, y, x_test, y_test, names, 1.0, "indexed")


def members(splits: Splits) -> tuple[set[int], set[int], set[int]]:
    return tuple({int(v) for v in s.x.ravel()} for s in (splits.train, splits.val, splits.test))  # type: ignore[return-value]


def test_digits_sizes_disjoint_and_stratified() -> None:
    raw = load_source("digits", Path("."))
    s = make_splits(raw, validation_fraction=0.1, test_fraction=0.2, seed=0)
    assert (len(s.test), len(s.val), len(s.train)) == (359, 144, 1294)  # 0.2 of 1797, then 0.1 of the 1438 left
    assert s.input_shape == (8, 8, 1) and s.num_classes == 10 and s.pixel_max == 16.0
    assert s.class_names == raw.class_names
    totals = np.bincount(raw.y_train)
    for split, share in ((s.test, 0.2), (s.val, 0.08)):
        assert np.all(np.abs(np.bincount(split.y, minlength=10) - share * totals) <= 1.5)  # per class, not just overall
    assert s.train.y.dtype == np.int64 and s.train.x.shape[1:] == (8, 8, 1)


def test_disjoint_and_complete() -> None:
    s = make_splits(indexed(np.arange(1000) % 7), validation_fraction=0.15, test_fraction=0.25, seed=4)
    train, val, test = members(s)
    assert train | val | test == set(range(1000)) and not (train & val or train & test or val & test)
    for split in (s.train, s.val, s.test):  # images stay with their labels
        np.testing.assert_array_equal(split.y, split.x.ravel().astype(int) % 7)


def test_same_seed_same_splits_other_seed_other_splits() -> None:
    raw = indexed(np.arange(300) % 3)
    a, b = (make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=7) for _ in range(2))
    assert members(a) == members(b)
    assert members(make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=8)) != members(a)


def test_every_class_in_every_split_when_possible() -> None:
    # 3 samples per class: a 10% cut would round to zero for each class, yet each split gets one of each.
    s = make_splits(indexed([0, 0, 0, 1, 1, 1, 2, 2, 2, 3]), validation_fraction=0.1, test_fraction=0.1, seed=0)
    assert set(s.train.y) == {0, 1, 2, 3} and set(s.val.y) == {0, 1, 2} and set(s.test.y) == {0, 1, 2}
    assert 3 not in set(s.val.y) | set(s.test.y)  # a single sample stays in training


def test_own_test_split_is_used_and_validation_comes_from_train() -> None:
    s = make_splits(indexed(np.arange(100) % 2, test_labels=[0, 1, 1]), validation_fraction=0.1,
                    test_fraction=0.5, seed=0)
    assert s.test.y.tolist() == [0, 1, 1] and np.all(s.test.x == -1)
    assert (len(s.val), len(s.train)) == (10, 90)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(DataError, match=rf"data\.validation_fraction is {fraction}; expected a fraction strictly "
                                        r"between 0 and 1"):
        make_splits(indexed([0, 1] * 10), validation_fraction=fraction, test_fraction=0.2, seed=0)


def test_too_few_samples_says_how_many_and_what_to_do() -> None:
    with pytest.raises(DataError, match=r"data\.test_fraction=0\.2 on 3 samples in 3 classes with at most 1 sample "
                                        r"per class: the test split would be empty whatever the fraction.*add data"):
        make_splits(indexed([0, 1, 2]), validation_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match=r"data\.validation_fraction=0\.5 on 2 samples .*the validation split would "
                                        r"be empty"):
        make_splits(indexed([0, 0, 1, 1]), validation_fraction=0.5, test_fraction=0.5, seed=0)
