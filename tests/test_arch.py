"""Shape plan and builder against Keras: shapes, parameter counts and FLOPs counted independently."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from nas.arch import ArchConfig, BlockConfig, plan
from nas.errors import InvalidArchitecture
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec


def arch(*blocks: BlockConfig, shape: tuple[int, int, int] = (8, 8, 1), **kw: object) -> ArchConfig:
    return ArchConfig(input_shape=shape, num_classes=10, blocks=blocks, **kw)  # type: ignore[arg-type]


def keras_feature_shape(model: Any) -> tuple[int, int, int]:
    """The feature map Keras computed before the head (the input of the GAP or Flatten layer)."""
    head = next(layer for layer in model.layers if layer.name in ("head_gap", "head_flatten"))
    return tuple(head.input.shape[1:])


def independent_flops(model: Any) -> int:
    """2 x multiply-accumulates of every Conv2D and Dense kernel, read from the shapes Keras built."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape
            total += 2 * oh * ow * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return int(total)


# A stride larger than the feature map is no collapse: with padding "same" Keras builds it, output 1x1.
STRIDE_CASES = {
    "1x1-stride-2": (arch(*[BlockConfig(8, strides=2, pooling="none")] * 4), (1, 1, 8)),  # 8 -> 4 -> 2 -> 1 -> 1
    "3x3-stride-4": (arch(BlockConfig(4, strides=4, pooling="none"), shape=(3, 3, 1)), (1, 1, 4)),
    "2x2-stride-2": (arch(BlockConfig(4, strides=2, pooling="none"), shape=(2, 2, 1)), (1, 1, 4)),
    "5x3-stride-3": (arch(BlockConfig(4, strides=3, kernel_size=5, pooling="none"), shape=(5, 3, 2)), (2, 1, 4)),
    "kernel-larger-than-map": (arch(BlockConfig(4, kernel_size=7, strides=2, convs=2, pooling="none"),
                                    shape=(3, 3, 1)), (2, 2, 4)),
    "stride-then-pool": (arch(BlockConfig(4, strides=3, pooling="max"), shape=(6, 7, 1)), (1, 1, 4)),
    "flatten-head": (arch(BlockConfig(4, strides=5, pooling="none"), shape=(4, 9, 1), head_type="flatten"),
                     (1, 2, 4)),
}


@pytest.mark.parametrize("case", STRIDE_CASES, ids=list(STRIDE_CASES))
def test_strides_larger_than_the_map_build_exactly_as_keras_does(case: str) -> None:
    from nas.builder import build_model

    a, expected = STRIDE_CASES[case]
    p = plan(a)
    model = build_model(a)
    assert p.feature_shape == expected == keras_feature_shape(model)
    assert p.params == model.count_params()
    assert p.flops == independent_flops(model)


def test_pooling_on_a_1x1_map_is_rejected() -> None:
    a = arch(*[BlockConfig(8, pooling="avg")] * 4)
    with pytest.raises(InvalidArchitecture, match=r"block 4: 1x1 input cannot take 2x2 avg pooling"):
        plan(a)


@pytest.mark.parametrize(("shape", "pooling"), [((1, 1, 1), "max"), ((1, 5, 1), "avg"), ((3, 1, 2), "max")])
def test_what_plan_calls_a_collapse_is_a_zero_sized_map_in_keras(monkeypatch: pytest.MonkeyPatch,
                                                                  shape: tuple[int, int, int], pooling: str) -> None:
    """The builder's own layers, with plan's guard switched off: Keras collapses the map (or refuses it)."""
    import nas.builder

    a = arch(BlockConfig(4, pooling=pooling), shape=shape)
    with pytest.raises(InvalidArchitecture, match=f"block 1: {shape[0]}x{shape[1]} input cannot take 2x2 {pooling}"):
        plan(a)
    monkeypatch.setattr(nas.builder, "plan", lambda arch: None)
    try:
        model = nas.builder.build_model(a)
    except ValueError:
        return  # Keras refuses to build it: a collapse
    assert 0 in keras_feature_shape(model)


# Counted by hand (multiply-accumulates x 2), not by any code under test.
KNOWN_FLOPS = {
    # 8x8x1, 3x3 conv to 4 filters: 8*8*9*1*4 = 2304 MACs; dense 4 -> 10: 40 MACs
    "one-block": (arch(BlockConfig(4), head_depth=0), 2 * (2304 + 40)),
    # the keras-io MNIST convnet's shape with padding same: 28*28*9*1*32 + 14*14*9*32*64 + 7*7*64*10
    "mnist-convnet": (arch(BlockConfig(32), BlockConfig(64), shape=(28, 28, 1), head_type="flatten", head_depth=0),
                      2 * (225_792 + 3_612_672 + 31_360)),
    # stride 2 then a second conv: 4*4*25*3*8 + 4*4*25*8*8; head 8 -> 16 -> 10
    "strided-two-convs": (arch(BlockConfig(8, kernel_size=5, strides=2, convs=2, pooling="none"), shape=(8, 8, 3),
                               head_width=16), 2 * (9_600 + 25_600 + 128 + 160)),
}


@pytest.mark.parametrize("case", KNOWN_FLOPS, ids=list(KNOWN_FLOPS))
def test_flops_match_a_hand_count_and_an_independent_count_over_the_keras_model(case: str) -> None:
    from nas.builder import build_model

    a, by_hand = KNOWN_FLOPS[case]
    assert plan(a).flops == by_hand
    assert independent_flops(build_model(a)) == by_hand


def test_shapes_flow_through_blocks() -> None:
    p = plan(arch(BlockConfig(8, strides=2, pooling="none"), BlockConfig(16, pooling="max"), shape=(28, 28, 1)))
    assert p.feature_shape == (7, 7, 16)


def test_arch_json_round_trip() -> None:
    a = arch(BlockConfig(8, kernel_size=5, convs=2), head_type="flatten", class_names=("a", "b"))
    b = ArchConfig.from_json(a.to_json())
    assert a == b
    assert json.loads(a.to_json())["format"] == "nas.arch/1"


SPACE = """name: t
data: {source: digits}
space:
  depth: {low: 1, high: 4}
  filters: [4, 8, 12]
  kernel_size: [1, 3, 5]
  strides: [1, 2]
  convs_per_block: [1, 2]
  pooling: [max, avg, none]
  dropout: [0.0, 0.2]
  activation: [relu, gelu, swish, elu, leaky_relu, tanh]
  batch_norm: [true, false]
  head: {type: [gap, flatten], depth: [0, 1, 2], width: [8, 16], dropout: [0.0, 0.1]}
"""


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (20, 12, 3)])
def test_builder_matches_plan_across_the_space(shape: tuple[int, int, int]) -> None:
    import keras

    from nas.builder import build_model

    space = SearchSpace(parse_spec(SPACE))
    rng = random.Random(hash(shape) % 1000)
    built = rejected = 0
    for _ in range(12):
        a = space.decode(space.sample(rng), DataInfo(shape, 10, 255.0)).arch
        try:
            expected = plan(a)
        except InvalidArchitecture:
            rejected += 1
            continue
        model = build_model(a)
        assert model.count_params() == expected.params, a
        assert keras_feature_shape(model) == expected.feature_shape, a
        assert independent_flops(model) == expected.flops, a
        assert model.input_shape == (None, *shape)
        assert model.output_shape == (None, 10)
        # the model holds no augmentation and starts from raw pixels
        names = [type(layer).__name__ for layer in model.layers]
        assert names[1] == "Rescaling" and not any(n.startswith("Random") for n in names)
        built += 1
        keras.backend.clear_session()
    assert built > 0


def test_builder_layer_names_read_block_by_block() -> None:
    from nas.builder import build_model

    m = build_model(arch(BlockConfig(8, convs=2), BlockConfig(16, pooling="none", dropout=0.1)))
    names = [layer.name for layer in m.layers]
    assert names[:9] == ["image", "rescale", "block1_conv1", "block1_bn1", "block1_act1", "block1_conv2",
                         "block1_bn2", "block1_act2", "block1_pool"]
    assert "block2_dropout" in names and names[-1] == "predictions"
