"""The messages between the search loop and the place a trial trains (light: no TensorFlow import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nas.space import Candidate

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


@dataclass
class TrialOutcome:
    state: str  # finished | pruned | failed
    reason: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # metrics of the best epoch (by val_accuracy)
    epochs_run: int = 0
    params: int = 0
    flops: int = 0
    wall_time_s: float = 0.0
    model_path: str | None = None
    traceback: str | None = None  # of an unexpected error, for --debug and the MLflow run
