"""The spec schema: one strict, frozen pydantic model per YAML section.

Every searchable key takes a fixed value, a choice list or a range (see `dims.py`). Unknown keys are
rejected (`extra="forbid"`) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema, model_validator

from nas.spec.dims import Dim, _Rule, default, dim, shown

ACTIVATIONS = ("relu", "gelu", "swish", "elu", "leaky_relu", "tanh", "selu", "mish")
POOLINGS = ("max", "avg", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "one_cycle")
HEADS = ("gap", "flatten")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
Direction = Literal["maximize", "minimize"]
METRICS: dict[str, Direction] = {  # objective metric -> natural direction
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "params": "minimize",
    "flops": "minimize",
    "latency_ms": "minimize",
    "size_kb": "minimize",
    "int8_val_accuracy": "maximize",
}
#: known before training, from the architecture alone: a constraint on them rejects a candidate untrained
STATIC_METRICS = ("params", "flops")
#: measured after training on the trial's TFLite artifact (finished trials only; see nas.deployed)
MEASURED_METRICS = ("latency_ms", "size_kb", "int8_val_accuracy")
MetricName = Literal["val_accuracy", "val_loss", "params", "flops", "latency_ms", "size_kb", "int8_val_accuracy"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def _duration(raw: Any) -> Any:
    """'90s', '30m', '2h', '1h30m' or a number of seconds -> seconds (float)."""
    if raw is None or isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", raw)
        if parts and any(parts.groups()):
            h, m, s = (float(g) if g else 0.0 for g in parts.groups())
            return h * 3600 + m * 60 + s
    raise ValueError(f"expected a duration such as 90s, 30m, 2h or 1h30m (or seconds as a number), got {shown(raw)}")


PositiveSeconds = Annotated[float, Field(gt=0)]
Duration = Annotated[PositiveSeconds | None, BeforeValidator(_duration)]


class DataSpec(Section):
    source: str = Field(description="digits | idx:<dir> | npz:<file> | folder:<dir> | keras:<name>; paths are relative "
                                    "to the spec file")
    validation_fraction: float = Field(0.15, gt=0, lt=1,
                                       description="share of the training data the search validates on")
    test_fraction: float = Field(0.2, gt=0, lt=1,
                                 description="held-out test share carved when the source has no test split")
    split_seed: int = Field(0, ge=0,
                            description="seeds the validation and test carving; independent of search.seed, so "
                            "searches with different seeds are scored on the same test split")
    image_size: tuple[int, int] | None = Field(None,
                                               description="folder sources: resize every image to [height, width]")
    color_mode: Literal["rgb", "grayscale"] | None = Field(None, description="folder sources: channel layout")
    pixel_max: float | None = Field(None, gt=0,
                                    description="largest raw pixel value; inferred from the data when omitted")


class AugmentSpec(Section):
    """Augmentation applied in the training step only (never inside the saved or exported model)."""

    flip: Annotated[Dim, dim("str", options=FLIPS)] = default("none")
    rotation: Annotated[Dim, dim("float", ge=0, le=0.5)] = default(0.0)
    translation: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    zoom: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    contrast: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    fill_mode: Literal["reflect", "constant", "nearest", "wrap"] = "reflect"


class FiltersGrowth(Section):
    """Block i (1-based) gets round(base * growth ** (i - 1)) filters."""

    base: Annotated[Dim, dim("int", ge=1)]
    growth: Annotated[Dim, dim("float", ge=1)] = default(2.0)


_FILTERS = _Rule("int", ge=1)  # the per-block form of space.filters; must match the annotation below


def _filters(raw: Any) -> Any:
    # A mapping with base/growth, or without any range or choice key, is the growth form (so a typo such as
    # `Base:` is reported against base/growth); a mapping with range keys is a per-block dimension.
    # Decided here rather than left to the union, which would report both branches' errors.
    range_keys = {"low", "high", "log", "step", "choices"}
    if isinstance(raw, dict) and ("base" in raw or "growth" in raw or not set(raw) & range_keys):
        return FiltersGrowth.model_validate(raw)
    return _FILTERS.parse(raw)


class HeadSpec(Section):
    type: Annotated[Dim, dim("str", options=HEADS)] = default("gap")
    depth: Annotated[Dim, dim("int", ge=0)] = default(1)
    width: Annotated[Dim, dim("int", ge=1)] = default(128)
    dropout: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)


class SpaceSpec(Section):
    """The architecture. Block-level keys are sampled once per block (block.1.*, block.2.*, ...)."""

    depth: Annotated[Dim, dim("int", ge=1, le=32)]
    # see _FILTERS
    filters: Annotated[FiltersGrowth | Annotated[Dim, dim("int", ge=1)], BeforeValidator(_filters)] = default(32)
    kernel_size: Annotated[Dim, dim("int", ge=1)] = default(3)
    strides: Annotated[Dim, dim("int", ge=1)] = default(1)
    convs_per_block: Annotated[Dim, dim("int", ge=1)] = default(1)
    pooling: Annotated[Dim, dim("str", options=POOLINGS)] = default("max")
    dropout: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    activation: Annotated[Dim, dim("str", options=ACTIVATIONS)] = default("relu")
    batch_norm: Annotated[Dim, dim("bool")] = default(True)
    head: HeadSpec = HeadSpec()
    per_block: bool = Field(True, description="sample block-level keys per block (false: one value for all blocks)")
    max_params: int | None = Field(None, ge=1, description="reject larger models before training")


class TrainSpec(Section):
    epochs: int = Field(10, ge=1, description="epoch budget of one trial")
    optimizer: Annotated[Dim, dim("str", options=OPTIMIZERS)] = default("adam")
    learning_rate: Annotated[Dim, dim("float", gt=0, lt=10)] = default(1e-3)
    schedule: Annotated[Dim, dim("str", options=SCHEDULES)] = default("constant")
    warmup: float | None = Field(None, ge=0, lt=1,
                                 description="share of a fit's planned steps spent ramping the learning "
                                 "rate up; default 0 for constant, 0.05 for cosine, 0.25 for one_cycle")
    weight_decay: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    batch_size: Annotated[Dim, dim("int", ge=1, le=65536)] = default(64)
    label_smoothing: Annotated[Dim, dim("float", ge=0, lt=1)] = default(0.0)
    early_stopping: int | None = Field(None, ge=1,
                                       description="stop a trial after this many epochs without a better val_accuracy")
    bn_momentum: float = Field(0.9, gt=0, lt=1,
                               description="0.9, not Keras' 0.99: short trials need fast BN statistics")
    deterministic: bool = Field(True, description="bit-identical runs for a seed (op determinism)")
    # the Keras framework trials train on (nas.framework); left out of dumps at its default so specs written
    # before it existed keep their hash
    backend: Literal["tensorflow", "jax", "torch"] = Field(
        "tensorflow", exclude_if=lambda v: v == "tensorflow",
        description="Keras framework trials train on: tensorflow | jax (pip install 'nas[jax]') | torch "
                    "(pip install 'nas[torch]'); trials run in a worker process of their own")
    precision: Literal["auto", "float32", "mixed"] = Field(
        "auto", exclude_if=lambda v: v == "auto",
        description="auto: mixed precision on a GPU, float32 on a CPU | float32 | mixed (bfloat16 where the device "
                    "has it, else float16); saved and exported models are float32 either way")
    jit_compile: Literal["auto"] | bool = Field(
        "auto", exclude_if=lambda v: v == "auto",
        description="XLA: auto (Keras' choice: on for jax and for tensorflow on a GPU) | true | false; a model XLA "
                    "cannot compile trains without it, noted in its MLflow run (nas.jit_compile)")


@dataclass(frozen=True)
class Bound:
    """A constraint's comparison, e.g. `<= 0.5`."""

    op: Literal["<=", ">=", "<", ">"]
    value: float

    def holds(self, x: float) -> bool:
        return {"<=": x <= self.value, ">=": x >= self.value, "<": x < self.value, ">": x > self.value}[self.op]

    def excess(self, x: float) -> float:
        """How far `x` is past the bound: <= 0 when it holds (a strict bound met exactly counts as a tiny excess),
        the form Optuna's samplers take constraints in."""
        over = x - self.value if self.op in ("<=", "<") else self.value - x
        return over if over != 0 or self.op in ("<=", ">=") else 1e-12

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


_BOUND = re.compile(r"\s*(<=|>=|<|>)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*")


def _bound(raw: Any) -> Any:
    if isinstance(raw, Bound):
        return raw
    m = _BOUND.fullmatch(raw) if isinstance(raw, str) else None
    if m is None:
        raise ValueError(f"expected a comparison such as '<= 0.5' or '>= 0.9' (one of <=, >=, <, > and a number, "
                         f"quoted in YAML), got {shown(raw)}")
    return Bound(m.group(1), float(m.group(2)))  # type: ignore[arg-type]


Constraint = Annotated[Bound, BeforeValidator(_bound), PlainSerializer(str), WithJsonSchema(
    {"type": "string", "pattern": r"^\s*(<=|>=|<|>)\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?\s*$", "examples": ["<= 0.5"],
     "description": "a comparison: <=, >=, < or > and a number"})]


class Objective(Section):
    metric: MetricName
    direction: Direction | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        return {"metric": raw} if isinstance(raw, str) else raw

    @property
    def resolved_direction(self) -> Direction:
        return self.direction or METRICS[self.metric]


class HyperbandSpec(Section):
    """KerasTuner Hyperband: brackets of successive halving, each round keeps 1/factor of the trials."""

    max_epochs: int | None = Field(None, ge=1, description="most epochs one trial trains; default: train.epochs")
    factor: int = Field(3, ge=2,
                        description="reduction factor: each round keeps 1/factor of the trials, trains factor x longer")


_OPTUNA_ONLY = ("sampler", "pruner", "warmup_epochs")
_KERAS_TUNER_ONLY = ("algorithm", "hyperband")


def _keys(names: list[str]) -> tuple[str, str]:
    """('search.a, search.b', 'is'/'are') for a message about these keys."""
    return ", ".join(f"search.{k}" for k in names), "is" if len(names) == 1 else "are"


class SearchSpec(Section):
    backend: Literal["optuna", "keras-tuner"] = "optuna"
    # keras-tuner only; left out of dumps when unset so specs written before they existed keep their hash
    algorithm: Literal["hyperband", "bayesian", "random"] | None = Field(
        None, exclude_if=lambda v: v is None, description="keras-tuner: hyperband (default) | bayesian | random")
    hyperband: HyperbandSpec | None = Field(
        None, exclude_if=lambda v: v is None, description="keras-tuner hyperband: {max_epochs, factor}")
    sampler: Literal["tpe", "random", "cmaes", "gp", "qmc", "nsga2"] = Field(
        "tpe", description="tpe | random | cmaes (one objective) | gp | qmc | nsga2 (several objectives)")
    pruner: Literal["asha", "median", "successive_halving", "hyperband", "pareto", "none"] = Field(
        "median", description="asha: pause trials at rungs (epochs 1, 3, 9, ...) and continue the top third from "
                              "their checkpoints | median | successive_halving | hyperband | pareto: prune a trial "
                              "less accurate than the median of peers no larger (params and FLOPs) at the same epoch, "
                              "the default with several objectives | none")
    trials: int = Field(20, ge=1, description="trials to finish (finished, pruned or diverged; a trial that errors "
                                              "gets a replacement); a rerun resumes up to this. "
                        "keras-tuner hyperband: an optional cap (its trial count follows hyperband.max_epochs and "
                        "factor)")
    timeout: Duration = Field(None, description="stop starting new trials after this long, e.g. 30m, 2h")
    budget: Duration = Field(None, description="the whole search ends by then, e.g. 30m: a trial still running is "
                             "stopped and its best epoch stands; a probe plans the budget first")
    endgame: float = Field(
        0.3, ge=0, lt=1, description="under search.budget with pruner asha: in the last share of the budget the "
        "best paused trial goes on before anything else, and trains on to the deadline (past train.epochs, while "
        "it improves, when its learning rate is a plain constant); 0: only once the time left is what it needs to "
        "finish its epochs")
    rung_data: Literal["auto", "subsets", "full"] = Field(
        "full", description="full: every epoch on all the training data (the default: it found the better model at "
        "30 minutes on Fashion-MNIST, bench/RESULTS.md); subsets: the epochs before each pruning rung train on a "
        "class-stratified share of it (1/9, 1/3, then all); auto: subsets when search.budget is set")
    trial_timeout: Duration = Field(None,
                                    description="fail a trial that trains longer than this (e.g. 20m) and replace "
                                    "its worker; the search goes on")
    seed: int = Field(0, ge=0)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="val_accuracy")], min_length=1)
    constraints: dict[MetricName, Constraint] = Field(
        default_factory=dict, exclude_if=lambda v: not v,
        description="e.g. {latency_ms: '<= 0.5', params: '<= 200000'}: params and flops reject a candidate before "
                    "training; measured ones steer the sampler (tpe, nsga2, gp) and mark trials feasible or not")
    measure_on: Literal["int8", "float32"] = Field(
        "int8", exclude_if=lambda v: v == "int8",
        description="the TFLite artifact latency_ms and size_kb are measured on (int8_val_accuracy: always int8)")
    startup_trials: int = Field(5, ge=0, description="trials sampled at random before the sampler and pruner kick in")
    warmup_epochs: int = Field(1, ge=0, description="epochs a trial runs before it can be pruned")
    max_failed_trials: int = Field(10, ge=1, description="stop the search after this many trials failed with an error")
    isolate_trials: bool = Field(True, description="train in a recycled worker process (bounded memory, crash-safe)")
    worker_max_trials: int = Field(25, ge=1, description="trials a worker process runs before it is replaced")
    workers: int = Field(1, ge=1, description="trials trained at once on this machine, each in a worker process of its "
                         "own (one per GPU when there are GPUs, else the CPU cores divided); optuna backend")

    @model_validator(mode="before")
    @classmethod
    def _default_algorithm(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("backend") == "keras-tuner" and "algorithm" not in raw:
            return {**raw, "algorithm": "hyperband"}
        if isinstance(raw, dict) and "pruner" not in raw and isinstance(raw.get("objectives"), list) \
                and len(raw["objectives"]) > 1:
            return {**raw, "pruner": "pareto"}  # the one pruner that works with several objectives
        return raw

    @property
    def measured(self) -> set[str]:
        """The metrics measured on each finished trial's TFLite artifact that objectives or constraints need."""
        return {m for m in [*(o.metric for o in self.objectives), *self.constraints] if m in MEASURED_METRICS}

    @model_validator(mode="after")
    def _backend_rules(self) -> SearchSpec:
        given = self.model_fields_set
        if self.backend == "optuna":
            wrong = [k for k in _KERAS_TUNER_ONLY if k in given]
            if wrong:
                keys, verb = _keys(wrong)
                raise ValueError(f"{keys} {verb} for backend keras-tuner only, but backend is 'optuna'; "
                                 f"set `backend: keras-tuner`, or remove {keys}")
            return self
        wrong = [k for k in _OPTUNA_ONLY if k in given]
        if wrong:
            keys, verb = _keys(wrong)
            raise ValueError(f"{keys} {verb} for backend optuna only, but backend is 'keras-tuner'; remove {keys} "
                             "and choose `algorithm: hyperband | bayesian | random` (hyperband takes "
                             "`hyperband: {max_epochs, factor}`)")
        if self.hyperband is not None and self.algorithm != "hyperband":
            raise ValueError(f"search.hyperband is for algorithm hyperband only, but algorithm is "
                             f"{self.algorithm!r}; remove search.hyperband, or set `algorithm: hyperband`")
        if "startup_trials" in given and self.algorithm != "bayesian":
            raise ValueError(f"search.startup_trials (random points before the Gaussian process) is for "
                             f"algorithm bayesian only, but algorithm is {self.algorithm!r}; remove "
                             "search.startup_trials")
        if len(self.objectives) > 1:
            raise ValueError(f"backend keras-tuner optimizes one objective, but {len(self.objectives)} are set; keep "
                             "one, or use `backend: optuna` for a multi-objective search")
        if self.constraints or self.measured:
            what = "search.constraints" if self.constraints else f"objective {sorted(self.measured)[0]}"
            raise ValueError(f"{what} needs backend optuna (keras-tuner optimizes val_accuracy, val_loss, params or "
                             "flops, without constraints); set `backend: optuna`")
        return self

    @model_validator(mode="after")
    def _multi_objective_rules(self) -> SearchSpec:
        if len(self.objectives) > 1:
            if self.pruner not in ("pareto", "none"):
                raise ValueError(
                    f"pruner {self.pruner!r} needs a single objective, but {len(self.objectives)} objectives are set; "
                    "set `pruner: pareto` (the default with several objectives) or `pruner: none`"
                )
            if self.sampler == "cmaes":
                raise ValueError("sampler 'cmaes' is single-objective; use tpe, nsga2, random, gp or qmc for several "
                                 "objectives")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}; list each metric once")
        return self


class TrackingSpec(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite store runs/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; default: the spec name")


ExportFormat = Literal[
    "keras", "saved_model", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx"
]
EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    "keras", "saved_model", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx"
)


class SelectRule(Section):
    """Pick the trial to export: the best by one metric among trials that meet `where`."""

    maximize: MetricName | None = None
    minimize: MetricName | None = None
    where: dict[MetricName, Constraint] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_goal(self) -> SelectRule:
        if (self.maximize is None) == (self.minimize is None):
            raise ValueError("export.select needs exactly one of `maximize: <metric>` or `minimize: <metric>`, e.g. "
                             "{maximize: val_accuracy, where: {latency_ms: '<= 1.0'}}")
        return self

    @property
    def metric(self) -> str:
        return str(self.maximize or self.minimize)


class ExportSpec(Section):
    """The winner made deployable: retrain on train+val, prune, quantize, export, measure (`nas export`)."""

    after_search: bool = Field(False, description="run the export when `nas search` completes")
    select: Literal["best", "knee"] | SelectRule = Field(
        "best", exclude_if=lambda v: v == "best",
        description="which trial: best (by the first objective) | knee (of the Pareto front: the trial farthest from "
                    "the line between the front's ends) | {maximize|minimize: <metric>, where: {<metric>: '<= x'}}")
    retrain_epochs: int | None = Field(None, ge=1, description="epochs on train+val; default train.epochs")
    sparsity: float = Field(0.5, ge=0, lt=1, description="target zero share of Conv2D/Dense kernels; 0 skips pruning")
    finetune_epochs: int = Field(4, ge=1,
                                 description="epochs of pruning fine-tuning (sparsity ramps up over the first half)")
    formats: list[ExportFormat] = Field(default_factory=lambda: list(EXPORT_FORMATS), min_length=1)
    int8_io: bool = Field(True, description="tflite-int8 takes and returns int8 (false: float32 in and out)")
    calibration_samples: int = Field(200, ge=1, description="training images that calibrate int8 quantization")
    latency_runs: int = Field(200, ge=10, description="batch-1 invocations timed per artifact (median reported)")
    registry: ExportFormat | None = Field("tflite-int8",
                                          description="artifact registered in the MLflow Model Registry (null: none)")

    @model_validator(mode="after")
    def _register_is_exported(self) -> ExportSpec:
        if self.registry and self.registry not in self.formats:
            raise ValueError(f"registry {self.registry!r} is not among formats {self.formats}; add it to formats "
                             "or set registry to one of them (or null)")
        return self


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
    export: ExportSpec = ExportSpec()
    report: bool = Field(True, description="write runs/<name>/report/index.html when the search completes "
                                           "(`nas report` writes it any time)")
