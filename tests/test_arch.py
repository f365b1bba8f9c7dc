"""Shape plan and builder: collapse rejection, and analytic parameter counts equal Keras' own."""

from __future__ import annotations

import json
import random

import pytest

from nas.arch import ArchConfig, BlockConfig, plan
from nas.errors import InvalidArchitecture
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec


def arch(*blocks: BlockConfig, shape: tuple[int, int, int] = (8, 8, 1), **kw: object) -> ArchConfig:
    return ArchConfig(input_shape=shape, num_classes=10, blocks=blocks, **kw)  # type: ignore[arg-type]


def test_stride_on_a_1x1_map_is_rejected_with_the_block_number() -> None:
    a = arch(BlockConfig(8, strides=2, pooling="none"), BlockConfig(8, strides=2, pooling="none"),
             BlockConfig(8, strides=2, pooling="none"), BlockConfig(8, strides=2, pooling="none"))
    with pytest.raises(InvalidArchitecture, match=r"^block 4: 1x1 input cannot take stride 2"):
        plan(a)


def test_pooling_on_a_1x1_map_is_rejected() -> None:
    a = arch(*[BlockConfig(8, pooling="avg")] * 4)
    with pytest.raises(InvalidArchitecture, match=r"block 4: 1x1 input cannot take 2x2 avg pooling"):
        plan(a)


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
            with pytest.raises(InvalidArchitecture):
                build_model(a)
            rejected += 1
            continue
        model = build_model(a)
        assert model.count_params() == expected.params, a
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
