"""The flat space: dimension names, size, decoding, sampling within bounds."""

from __future__ import annotations

import random

import pytest

from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec

DATA = DataInfo((28, 28, 1), 10, 255.0, tuple("0123456789"))


def space(text: str) -> SearchSpace:
    return SearchSpace(parse_spec("name: t\ndata: {source: digits}\n" + text))


def test_per_block_dims_exist_up_to_the_largest_depth() -> None:
    s = space("space:\n  depth: {low: 1, high: 3}\n  kernel_size: [3, 5]\n  filters: [8, 16]\n")
    assert [n for n in s.dims if n.startswith("block.")] == [
        "block.1.filters", "block.2.filters", "block.3.filters",
        "block.1.kernel_size", "block.2.kernel_size", "block.3.kernel_size",
    ]
    assert s.size() == 3 * 2**3 * 2**3


def test_shared_block_dims_when_per_block_is_false() -> None:
    s = space("space:\n  depth: {low: 1, high: 3}\n  kernel_size: [3, 5]\n  per_block: false\n")
    assert "kernel_size" in s.dims and not any(n.startswith("block.") for n in s.dims)


def test_float_range_makes_the_space_continuous() -> None:
    assert space("space: {depth: 2, dropout: {low: 0.0, high: 0.5}}\n").size() is None


def test_decode_ignores_inactive_blocks_and_applies_growth() -> None:
    s = space("space:\n  depth: {low: 1, high: 4}\n  filters: {base: [8, 16], growth: 2.0}\n  pooling: [max, none]\n")
    params = {"depth": 3, "filters.base": 16, **{f"block.{i}.pooling": "none" for i in range(1, 5)}}
    arch = s.decode(params, DATA).arch
    assert [b.filters for b in arch.blocks] == [16, 32, 64]
    assert len(arch.blocks) == 3 and all(b.pooling == "none" for b in arch.blocks)
    assert arch.input_shape == (28, 28, 1) and arch.pixel_max == 255.0


def test_decode_carries_training_and_augmentation_values() -> None:
    s = space("space: {depth: 1}\ntrain:\n  optimizer: [adam, sgd]\n  batch_size: 32\naugment:\n  zoom: [0.0, 0.1]\n")
    cand = s.decode({"train.optimizer": "sgd", "augment.zoom": 0.1}, DATA)
    assert cand.train.optimizer == "sgd" and cand.train.batch_size == 32
    assert cand.train.augment["zoom"] == 0.1 and cand.train.augment["fill_mode"] == "reflect"


def test_missing_param_is_a_clear_key_error() -> None:
    s = space("space: {depth: [1, 2]}\n")
    with pytest.raises(KeyError, match="depth"):
        s.decode({}, DATA)


def test_samples_lie_inside_the_space() -> None:
    s = space("""space:
  depth: {low: 1, high: 4}
  filters: [8, 16, 32]
  dropout: {low: 0.0, high: 0.5, step: 0.1}
train:
  learning_rate: {low: 1e-4, high: 1e-1, log: true}
  batch_size: {low: 16, high: 128, step: 16}
""")
    rng = random.Random(0)
    for _ in range(200):
        p = s.sample(rng)
        assert s.contains(p)
        assert p["train.batch_size"] % 16 == 0
    assert not s.contains({**s.sample(rng), "depth": 9})
