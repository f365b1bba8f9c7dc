"""The spec's search space made flat and static: named dimensions, and `decode(params)` to a candidate.

Block-level keys exist for every block up to the largest depth ("block.3.kernel_size"); a sample with a
smaller depth ignores the extra ones. A fixed set of dimensions is what multivariate TPE needs, and what
any backend (Optuna, KerasTuner) can declare up front.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from nas.arch import ArchConfig, BlockConfig
from nas.schedule import resolve_warmup
from nas.spec.dims import Choice, Dim, Fixed, FloatRange, IntRange, cardinality, is_searchable
from nas.spec.model import FiltersGrowth, Spec

BLOCK_KEYS = ("kernel_size", "strides", "convs_per_block", "pooling", "dropout")
_GLOBAL_SPACE_KEYS = ("activation", "batch_norm")
_HEAD_KEYS = ("type", "depth", "width", "dropout")
_TRAIN_KEYS = ("optimizer", "learning_rate", "schedule", "weight_decay", "batch_size", "label_smoothing")
_AUGMENT_KEYS = ("flip", "rotation", "translation", "zoom", "contrast")


@dataclass(frozen=True)
class DataInfo:
    """What the builder needs to know of the data (never the data itself)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    pixel_max: float
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    optimizer: str
    learning_rate: float
    weight_decay: float
    momentum: float
    batch_size: int
    label_smoothing: float
    early_stopping: int | None
    deterministic: bool
    augment: dict[str, Any]
    schedule: str = "constant"
    warmup: float = 0.0  # resolved: the share of the planned steps spent warming up


@dataclass(frozen=True)
class Candidate:
    arch: ArchConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"arch": asdict(self.arch), "train": asdict(self.train)}


class SearchSpace:
    def __init__(self, spec: Spec):
        self.spec = spec
        s = spec.space
        self.max_depth = _max_int(s.depth)
        dims: dict[str, Dim] = {"depth": s.depth}
        if isinstance(s.filters, FiltersGrowth):
            dims["filters.base"] = s.filters.base
            dims["filters.growth"] = s.filters.growth
        else:
            dims.update(self._block_dims("filters", s.filters))
        for key in BLOCK_KEYS:
            dims.update(self._block_dims(key, getattr(s, key)))
        for key in _GLOBAL_SPACE_KEYS:
            dims[key] = getattr(s, key)
        for key in _HEAD_KEYS:
            dims[f"head.{key}"] = getattr(s.head, key)
        for key in _TRAIN_KEYS:
            dims[f"train.{key}"] = getattr(spec.train, key)
        for key in _AUGMENT_KEYS:
            dims[f"augment.{key}"] = getattr(spec.augment, key)
        self.all_dims = dims
        #: the searchable dimensions, in a stable order (the order backends declare them)
        self.dims: dict[str, Dim] = {k: d for k, d in dims.items() if is_searchable(d)}

    def _block_dims(self, key: str, d: Dim) -> dict[str, Dim]:
        if not is_searchable(d) or not self.spec.space.per_block:
            return {key: d}
        return {f"block.{i}.{key}": d for i in range(1, self.max_depth + 1)}

    def size(self, finite_only: bool = False) -> int | None:
        """Number of distinct points, or None when a float range makes it continuous
        (with `finite_only`, the product over the finite dimensions alone)."""
        total = 1
        for d in self.dims.values():
            n = cardinality(d)
            if n is None and not finite_only:
                return None
            total *= n or 1
        return total

    def value(self, name: str, params: dict[str, Any]) -> Any:
        d = self.all_dims[name]
        if name in self.dims:
            if name not in params:
                raise KeyError(f"sampled params lack dimension {name!r}")
            return params[name]
        return d.value if isinstance(d, Fixed) else d.values[0]  # type: ignore[union-attr]

    def _block_value(self, key: str, i: int, params: dict[str, Any]) -> Any:
        name = f"block.{i}.{key}"
        return self.value(name if name in self.all_dims else key, params)

    def decode(self, params: dict[str, Any], data: DataInfo) -> Candidate:
        """The concrete architecture and training config of one sample. Pure and deterministic."""
        t = self.spec.train
        depth = int(self.value("depth", params))
        blocks = []
        for i in range(1, depth + 1):
            if "filters.base" in self.all_dims:
                base, growth = self.value("filters.base", params), self.value("filters.growth", params)
                filters = max(1, int(round(base * growth ** (i - 1))))
            else:
                filters = int(self._block_value("filters", i, params))
            blocks.append(BlockConfig(
                filters=filters,
                kernel_size=int(self._block_value("kernel_size", i, params)),
                strides=int(self._block_value("strides", i, params)),
                convs=int(self._block_value("convs_per_block", i, params)),
                pooling=str(self._block_value("pooling", i, params)),
                dropout=float(self._block_value("dropout", i, params)),
            ))
        arch = ArchConfig(
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            blocks=tuple(blocks),
            pixel_max=data.pixel_max,
            activation=str(self.value("activation", params)),
            batch_norm=bool(self.value("batch_norm", params)),
            bn_momentum=t.bn_momentum,
            head_type=str(self.value("head.type", params)),
            head_depth=int(self.value("head.depth", params)),
            head_width=int(self.value("head.width", params)),
            head_dropout=float(self.value("head.dropout", params)),
            class_names=data.class_names,
        )
        augment = {k: self.value(f"augment.{k}", params) for k in _AUGMENT_KEYS}
        augment["fill_mode"] = self.spec.augment.fill_mode
        train = TrainConfig(
            epochs=t.epochs,
            optimizer=str(self.value("train.optimizer", params)),
            learning_rate=float(self.value("train.learning_rate", params)),
            weight_decay=float(self.value("train.weight_decay", params)),
            momentum=t.momentum,
            batch_size=int(self.value("train.batch_size", params)),
            label_smoothing=float(self.value("train.label_smoothing", params)),
            early_stopping=t.early_stopping,
            deterministic=t.deterministic,
            augment=augment,
            schedule=(schedule := str(self.value("train.schedule", params))),
            warmup=resolve_warmup(schedule, t.warmup),
        )
        return Candidate(arch=arch, train=train)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniform random point (log-uniform on log ranges); used by `nas validate`'s survey."""
        out: dict[str, Any] = {}
        for name, d in self.dims.items():
            if isinstance(d, Choice):
                out[name] = rng.choice(d.values)
            elif isinstance(d, IntRange):
                if d.log:
                    out[name] = int(round(math.exp(rng.uniform(math.log(d.low), math.log(d.high)))))
                else:
                    out[name] = rng.randrange(d.low, d.high + 1, d.step)
            elif isinstance(d, FloatRange):
                if d.log:
                    out[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
                elif d.step:
                    out[name] = d.low + d.step * rng.randint(0, int((d.high - d.low) / d.step + 1e-9))
                else:
                    out[name] = rng.uniform(d.low, d.high)
        return out

    def contains(self, params: dict[str, Any]) -> bool:
        """True when `params` holds exactly the searchable dims, each within its declared domain."""
        if set(params) != set(self.dims):
            return False
        for name, d in self.dims.items():
            v = params[name]
            if isinstance(d, Choice) and v not in d.values:
                return False
            if isinstance(d, (IntRange, FloatRange)) and not d.low - 1e-12 <= v <= d.high + 1e-12:
                return False
        return True


def _max_int(d: Dim) -> int:
    if isinstance(d, Fixed):
        return int(d.value)
    if isinstance(d, Choice):
        return int(max(d.values))
    return int(d.high)
