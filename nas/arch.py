"""A concrete architecture (`ArchConfig`) and its analytic shape plan.

`plan()` walks the layers arithmetically: output shapes, parameter count and FLOPs without TensorFlow, so
impossible or oversized models are rejected before a trial starts (and `nas validate` stays fast). The
Keras builder must agree with it exactly; a test checks that across the space.

Shapes follow Keras: every convolution uses `padding="same"`, so a stride larger than the feature map
still builds (the output is 1x1), and only a 2x2 pooling on a map smaller than 2x2 collapses it (Keras
would produce a 0-sized map).

FLOPs are counted as 2 x the multiply-accumulates of the Conv2D and Dense kernels for one image, forward
pass (one multiply and one add each). Biases, batch normalization, activations, pooling and the global
average are not counted: they are a few percent at most in these networks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from nas.errors import InvalidArchitecture


@dataclass(frozen=True)
class BlockConfig:
    filters: int
    kernel_size: int = 3
    strides: int = 1
    convs: int = 1
    pooling: str = "max"  # max | avg | none
    dropout: float = 0.0


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild the model; `best/arch.json` is this, serialized."""

    input_shape: tuple[int, int, int]
    num_classes: int
    blocks: tuple[BlockConfig, ...]
    pixel_max: float = 255.0
    activation: str = "relu"
    batch_norm: bool = True
    bn_momentum: float = 0.9
    head_type: str = "gap"  # gap | flatten
    head_depth: int = 1
    head_width: int = 128
    head_dropout: float = 0.0
    class_names: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps({"format": "nas.arch/1", **asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArchConfig:
        raw = {k: v for k, v in raw.items() if k != "format"}
        raw["input_shape"] = tuple(raw["input_shape"])
        raw["blocks"] = tuple(BlockConfig(**b) for b in raw["blocks"])
        raw["class_names"] = tuple(raw.get("class_names", ()))
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Plan:
    params: int
    flops: int  # 2 x multiply-accumulates of Conv2D and Dense kernels, forward pass, one image
    feature_shape: tuple[int, int, int]  # before the head


def _conv_out(size: int, stride: int) -> int:
    return math.ceil(size / stride)  # padding="same"


def plan(arch: ArchConfig) -> Plan:
    """Check the shapes block by block and count parameters and FLOPs.

    Raises InvalidArchitecture with the first block whose feature map collapses (a 2x2 pooling on a map
    smaller than 2x2). A stride larger than the map is not a collapse: with "same" padding Keras builds it.
    """
    h, w, c = arch.input_shape
    params = flops = 0
    for i, b in enumerate(arch.blocks, start=1):
        for j in range(b.convs):
            stride = b.strides if j == 0 else 1
            h, w = _conv_out(h, stride), _conv_out(w, stride)
            k = b.kernel_size
            params += k * k * c * b.filters + (0 if arch.batch_norm else b.filters)
            flops += 2 * h * w * k * k * c * b.filters
            c = b.filters
            if arch.batch_norm:
                params += 4 * c  # gamma, beta, moving mean, moving variance
        if b.pooling != "none":
            if h < 2 or w < 2:
                raise InvalidArchitecture(
                    f"block {i}: {h}x{w} input cannot take 2x2 {b.pooling} pooling "
                    f"(the feature map would collapse); use pooling none here or fewer blocks"
                )
            h, w = h // 2, w // 2
    features = c if arch.head_type == "gap" else h * w * c
    width_in = features
    for _ in range(arch.head_depth):
        params += width_in * arch.head_width + arch.head_width
        flops += 2 * width_in * arch.head_width
        width_in = arch.head_width
    params += width_in * arch.num_classes + arch.num_classes
    flops += 2 * width_in * arch.num_classes
    return Plan(params=params, flops=flops, feature_shape=(h, w, c))
