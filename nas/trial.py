"""The trial vocabulary shared by the worker, the objective, the backends, the leaderboard and MLflow.

Light on purpose (no TensorFlow import): the search loop, the backends and `nas status` all read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from nas.space import Candidate

if TYPE_CHECKING:
    from nas.spec.model import Objective

#: per-epoch metrics, as Keras logs them and as they appear in MLflow curves
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

#: called after every epoch with (epoch, metrics); returns "continue", "prune" (or "prune: <why>"), "pause" (stop
#: here with a checkpoint to continue from if a rung promotes the trial later) or "stop" (search.budget spent)
EpochHook = Callable[[int, dict[str, float]], str]


class TrialState(StrEnum):
    """How a trial ended. A StrEnum, so it is stored and compared as its plain value ("finished", ...)."""

    FINISHED = "finished"  # trained to the end (or stopped early by early_stopping)
    PRUNED = "pruned"  # judged hopeless: by the pruner, or rejected before training (impossible shape, too large)
    PAUSED = "paused"  # stopped at a rung with a checkpoint (pruner asha): a later trial may continue it
    DIVERGED = "diverged"  # its loss became NaN/inf: a verdict on the params, like pruning
    FAILED = "failed"  # an error: an exception, a dead worker, out of memory, the trial timeout
    INTERRUPTED = "interrupted"  # cut off by Ctrl-C, SIGTERM or kill -9; a rerun runs it again

    @property
    def counts(self) -> bool:
        """Whether the trial counts toward `search.trials`: it reached a verdict on its params. A failed trial
        says nothing about its params (a replacement runs, up to search.max_failed_trials); an interrupted one
        is run again."""
        return self in (TrialState.FINISHED, TrialState.PRUNED, TrialState.PAUSED, TrialState.DIVERGED)


def tally(states: Iterable[str]) -> dict[TrialState, int]:
    """How many trials ended in each state; unknown states (running, waiting) are left out."""
    counts = dict.fromkeys(TrialState, 0)
    for s in states:
        if s in counts:
            counts[TrialState(s)] += 1
    return counts


def describe_tally(counts: dict[TrialState, int]) -> str:
    """ "3 finished, 1 pruned, 0 failed" plus paused, diverged and interrupted when there are any."""
    parts = [f"{counts[s]} {s.value}" for s in TrialState
             if s in (TrialState.FINISHED, TrialState.PRUNED, TrialState.FAILED) or counts[s]]
    return ", ".join(parts)


#: a paused trial (pruner asha) becomes the best model only by leading by this many standard errors of the
#: difference of two validation accuracies: past the noise of the validation split, where the max of many
#: low-fidelity scores would otherwise win by luck (README, "pruner: asha")
PAUSED_LEAD = 2.0


def competing_value(state: str, metric: str, value: float, val_samples: float | None) -> float:
    """What a trial's primary objective `value` counts for when the best model is chosen (best/, the leaderboard's
    order, a shared study's winner): a finished trial's value; a paused trial's val_accuracy less PAUSED_LEAD
    standard errors, sqrt(2 p (1 - p) / n) on n validation images; NaN (out of the running) for any other trial,
    and for a paused one on another metric or of unknown n."""
    if state == TrialState.FINISHED:
        return value
    if state != TrialState.PAUSED or metric != "val_accuracy" or not val_samples or not math.isfinite(val_samples) \
            or not math.isfinite(value):
        return math.nan
    p = min(max(value, 0.0), 1.0)
    return value - PAUSED_LEAD * math.sqrt(2 * p * (1 - p) / val_samples)


def trial_seed(search_seed: int, number: int) -> int:
    """The seed trial `number` trains with; export retrains the winner with the same one."""
    return search_seed + number


def timeout_reason(seconds: float, epochs_run: int) -> str:
    limit = f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"
    return f"ran past search.trial_timeout ({limit}) after {epochs_run} epoch(s); raise it or shrink the space"


@dataclass(frozen=True)
class TrialTask:
    number: int
    candidate: Candidate
    seed: int
    epochs: int  # budget: kept apart from the sampled params
    initial_epoch: int = 0
    save_model_to: str | None = None  # write the best-epoch model here (.keras) when the trial finishes or pauses
    monitor: str = "val_accuracy"  # which epoch is "best" (weights kept, metrics reported)
    mode: str = "maximize"
    save_threshold: float | None = None  # save only if the best monitored value beats this (the current best)
    time_limit_s: float | None = None  # inline trials stop themselves past it (a worker process is killed instead)
    # cheap early rungs: (last epoch, share of the training data) per span of epochs; () = all data throughout
    stages: tuple[tuple[int, float], ...] = ()
    stop_at: float | None = None  # search.budget's deadline (time.time()): training stops at the first batch past it
    checkpoint_to: str | None = None  # write the training state here when the trial pauses or ends its epochs
    resume_from: str | None = None  # continue from this checkpoint (its epoch, weights, optimizer, curve)
    # the endgame's finalist (nas.backends.asha): a constant learning rate decays to ~0 over the epochs after this
    # one (cosine, per epoch), as in a warmup-stable-decay schedule: the stable phase may end whenever it is needed
    decay_from: int | None = None
    # measure these on the finished trial's TFLite artifact (nas.deployed): latency_ms, size_kb, int8_val_accuracy
    measure: tuple[str, ...] = ()
    measure_on: str = "int8"  # the artifact latency and size are measured on: int8 | float32
    calibration_samples: int = 200  # training images that calibrate int8 quantization


@dataclass
class TrialResult:
    """One trial's result, from the worker through the objective and the backends to the leaderboard and MLflow.

    `metrics` holds the best epoch's metrics (by the task's monitor) and the trial's own numbers: best_epoch,
    epochs_run, wall_time_s from the worker; params and flops added by the objective.
    """

    state: TrialState
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model_path: str | None = None  # the best-epoch model, saved when the trial finished or paused and may be best
    traceback: str | None = None  # of an unexpected error, for --debug and the MLflow run
    tags: dict[str, str] = field(default_factory=dict)  # notes from the worker for the MLflow run (nas.*)

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)

    @property
    def counts(self) -> bool:
        return self.state.counts

    def values(self, objectives: list[Objective]) -> list[float]:
        return [float(self.metrics.get(o.metric, math.nan)) for o in objectives]
