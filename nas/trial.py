"""The messages between the search loop and the place a trial trains (light: no TensorFlow import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nas.space import Candidate

#: per-epoch metrics, as Keras logs them and as they appear in MLflow curves
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

#: called after every epoch with (epoch, metrics); returns "continue" or "prune"
EpochHook = Callable[[int, dict[str, float]], str]


@dataclass(frozen=True)
class TrialTask:
    number: int
    candidate: Candidate
    seed: int
    epochs: int  # budget: kept apart from the sampled params
    initial_epoch: int = 0
    save_model_to: str | None = None  # write the best-epoch model here (.keras) when the trial finishes
    monitor: str = "val_accuracy"  # which epoch is "best" (weights kept, metrics reported)
    mode: str = "maximize"
    save_threshold: float | None = None  # save only if the best monitored value beats this (the current best)


@dataclass
class TrialOutcome:
    state: str  # finished | pruned | failed
    reason: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # metrics of the best epoch (by the task's monitor)
    best_epoch: int | None = None
    epochs_run: int = 0
    wall_time_s: float = 0.0
    model_path: str | None = None
    traceback: str | None = None  # of an unexpected error, for --debug and the MLflow run
    error: bool = False  # an exception or a dead worker, as opposed to a judged outcome (divergence, pruning)
