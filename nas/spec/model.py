"""The spec schema: one strict, frozen pydantic model per YAML section.

Every searchable key takes a fixed value, a choice list or a range (see `dims.py`). Unknown keys are
rejected (`extra="forbid"`) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from nas.spec.dims import dim

ACTIVATIONS = ("relu", "gelu", "swish", "elu", "leaky_relu", "tanh", "selu", "mish")
POOLINGS = ("max", "avg", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
HEADS = ("gap", "flatten")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
METRICS = {  # objective metric -> natural direction
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "params": "minimize",
    "flops": "minimize",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _duration(raw: Any) -> Any:
    """'90s', '30m', '2h', '1h30m' or a number of seconds -> seconds (float)."""
    if raw is None or isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", raw)
        if parts and any(parts.groups()):
            h, m, s = (float(g) if g else 0.0 for g in parts.groups())
            return h * 3600 + m * 60 + s
    raise ValueError(f"expected a duration such as 90s, 30m, 2h or 1h30m (or seconds as a number), got {raw!r}")


PositiveSeconds = Annotated[float, Field(gt=0)]
Duration = Annotated[PositiveSeconds | None, BeforeValidator(_duration)]


class DataSpec(Section):
    source: str = Field(description="digits | idx:<dir> | npz:<file> | folder:<dir> | keras:<name>; paths are relative to the spec file")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="share of the training data the search validates on")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out test share carved when the source has no test split")
    image_size: tuple[int, int] | None = Field(None, description="folder sources: resize every image to [height, width]")
    color_mode: Literal["rgb", "grayscale"] | None = Field(None, description="folder sources: channel layout")
    pixel_max: float | None = Field(None, gt=0, description="largest raw pixel value; inferred from the data when omitted")


class AugmentSpec(Section):
    """Augmentation applied to training batches in tf.data only (never inside the exported model)."""

    flip: dim("str", options=FLIPS) = "none"
    rotation: dim("float", ge=0, le=0.5) = 0.0
    translation: dim("float", ge=0, lt=1) = 0.0
    zoom: dim("float", ge=0, lt=1) = 0.0
    contrast: dim("float", ge=0, lt=1) = 0.0
    fill_mode: Literal["reflect", "constant", "nearest", "wrap"] = "reflect"


class FiltersGrowth(Section):
    """Block i (1-based) gets round(base * growth ** (i - 1)) filters."""

    base: dim("int", ge=1)
    growth: dim("float", ge=1) = 2.0


def _filters(raw: Any) -> Any:
    # A mapping with base/growth keys is the growth form; anything else is a per-block dimension.
    if isinstance(raw, dict) and ("base" in raw or "growth" in raw):
        return FiltersGrowth.model_validate(raw)
    return raw


class HeadSpec(Section):
    type: dim("str", options=HEADS) = "gap"
    depth: dim("int", ge=0) = 1
    width: dim("int", ge=1) = 128
    dropout: dim("float", ge=0, lt=1) = 0.0


class SpaceSpec(Section):
    """The architecture. Block-level keys are sampled once per block (block.1.*, block.2.*, ...)."""

    depth: dim("int", ge=1, le=32)
    filters: Annotated[FiltersGrowth | dim("int", ge=1), BeforeValidator(_filters)] = 32
    kernel_size: dim("int", ge=1) = 3
    strides: dim("int", ge=1) = 1
    convs_per_block: dim("int", ge=1) = 1
    pooling: dim("str", options=POOLINGS) = "max"
    dropout: dim("float", ge=0, lt=1) = 0.0
    activation: dim("str", options=ACTIVATIONS) = "relu"
    batch_norm: dim("bool") = True
    head: HeadSpec = HeadSpec()
    per_block: bool = Field(True, description="sample block-level keys per block (false: one value for all blocks)")
    max_params: int | None = Field(None, ge=1, description="reject larger models before training")


class TrainSpec(Section):
    epochs: int = Field(10, ge=1, description="epoch budget of one trial")
    optimizer: dim("str", options=OPTIMIZERS) = "adam"
    learning_rate: dim("float", gt=0, lt=10) = 1e-3
    weight_decay: dim("float", ge=0, lt=1) = 0.0
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    batch_size: dim("int", ge=1, le=65536) = 64
    label_smoothing: dim("float", ge=0, lt=1) = 0.0
    early_stopping: int | None = Field(None, ge=1, description="stop a trial after this many epochs without a better val_accuracy")
    bn_momentum: float = Field(0.9, gt=0, lt=1, description="0.9, not Keras' 0.99: short trials need fast BN statistics")
    deterministic: bool = Field(True, description="bit-identical runs for a seed (op determinism)")


class Objective(Section):
    metric: Literal["val_accuracy", "val_loss", "params", "flops"]
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        return {"metric": raw} if isinstance(raw, str) else raw

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class SearchSpec(Section):
    backend: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random", "cmaes", "gp", "qmc"] = "tpe"
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    trials: int = Field(20, ge=1, description="trials to finish (completed + pruned); a rerun resumes up to this")
    timeout: Duration = Field(None, description="stop starting new trials after this long, e.g. 30m, 2h")
    seed: int = Field(0, ge=0)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="val_accuracy")], min_length=1)
    startup_trials: int = Field(5, ge=0, description="trials sampled at random before the sampler and pruner kick in")
    warmup_epochs: int = Field(1, ge=0, description="epochs a trial runs before it can be pruned")
    max_failed_trials: int = Field(10, ge=1, description="stop the search after this many trials failed with an error")
    isolate_trials: bool = Field(True, description="train in a recycled worker process (bounded memory, crash-safe)")
    worker_max_trials: int = Field(10, ge=1, description="trials a worker process runs before it is replaced")

    @model_validator(mode="after")
    def _multi_objective_rules(self) -> SearchSpec:
        if len(self.objectives) > 1:
            if self.pruner != "none":
                raise ValueError(
                    f"pruner {self.pruner!r} needs a single objective, but {len(self.objectives)} objectives are set; "
                    "set `pruner: none` for a multi-objective search"
                )
            if self.sampler == "cmaes":
                raise ValueError("sampler 'cmaes' is single-objective; use tpe, random, gp or qmc for several objectives")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}; list each metric once")
        return self


class TrackingSpec(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite store runs/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; default: the spec name")


class Spec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
                      description="names the run directory runs/<name>/ and the MLflow experiment")
    description: str = ""
    data: DataSpec
    augment: AugmentSpec = AugmentSpec()
    space: SpaceSpec
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    tracking: TrackingSpec = TrackingSpec()

