"""One trial, the same for every backend: decode -> pre-flight -> train in the runner -> track -> judge.

A backend (Optuna, KerasTuner) owns the loop and the sampling; it calls `TrialObjective` with sampled params,
an epoch budget kept apart from them, and an optional prune hook, and gets back a `TrialResult` holding every
metric, so single- and multi-objective searches read their values from the same place.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.arch import plan
from nas.budget import BudgetPlan, Stages, cap_reason
from nas.checkpoint import read_progress
from nas.errors import InvalidArchitecture
from nas.progress import Reporter
from nas.rundir import RunDir, promote_best
from nas.space import DataInfo, SearchSpace
from nas.spec.model import STATIC_METRICS, Bound, Objective
from nas.tracking import Tracker
from nas.trial import EPOCH_METRICS, TrialResult, TrialState, TrialTask, competing_value, trial_seed
from nas.worker import Runner

#: the backend's verdict after each epoch: True/"prune", False/"continue", or "pause" (stop with a checkpoint)
PruneHook = Callable[[int, dict[str, float]], "bool | str"]


def _better(a: float, b: float | None, direction: str) -> bool:
    return b is None or (a > b if direction == "maximize" else a < b)


class TrialObjective:
    def __init__(self, *, space: SearchSpace, data: DataInfo, runner: Runner, tracker: Tracker,
                 reporter: Reporter, run: RunDir, objectives: list[Objective], seed: int,
                 best_value: float | None = None, max_params: int | None = None, deadline: float | None = None,
                 budget_plan: BudgetPlan | None = None, stages: Stages = (), runners: list[Runner] | None = None,
                 trial_tags: dict[str, str] | None = None, best_lock: Any = None, share_best: bool = False,
                 constraints: dict[str, Bound] | None = None, measure: tuple[str, ...] = (),
                 measure_on: str = "int8", calibration_samples: int = 200):
        """`runners`: one per worker (--workers), each trial runs in the one its caller passes; `runner` is the
        first. `trial_tags` go on every trial's MLflow run (the machine and run dir that ran it). `best_lock`: held
        while best/ changes (nas.search settles it under the same lock). `share_best`: machines share the study,
        so a trial that becomes this machine's best logs its model to its MLflow run, where every machine (and
        `nas export` of the study's winner) can reach it. `constraints` (search.constraints): those on params and
        flops reject a candidate before training. `measure`: the metrics nas.deployed measures on each finished
        trial's TFLite artifact (`measure_on` int8 or float32)."""
        self.constraints = constraints or {}
        self.measure, self.measure_on, self.calibration_samples = measure, measure_on, calibration_samples
        self.share_best = share_best
        self.space, self.data, self.runner, self.tracker = space, data, runner, tracker
        self.runners = runners or [runner]
        self.trial_tags = trial_tags or {}
        self._best_lock = best_lock or threading.Lock()  # workers finish trials concurrently
        self.reporter, self.run, self.objectives, self.seed = reporter, run, objectives, seed
        self.best_value, self.max_params = best_value, max_params
        self.deadline, self.budget_plan = deadline, budget_plan  # search.budget: when every trial stops; its plan
        self.stages = stages  # cheap early rungs: the share of the training data each span of epochs trains on
        self.primary = objectives[0]

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, initial_epoch: int = 0,
                 should_prune: PruneHook | None = None, tags: dict[str, str] | None = None,
                 checkpoint: bool = False, resume_of: int | None = None, runner: Runner | None = None,
                 decay_from: int | None = None) -> TrialResult:
        """Run trial `number` (in `runner`, default the first). `checkpoint`: leave a checkpoint when it pauses or
        ends its epochs, so a later trial can continue it; `resume_of`: continue trial N from N's checkpoint (its
        epochs are not retrained); `decay_from`: the learning rate decays over the epochs after it (TrialTask)."""
        candidate = self.space.decode(params, self.data)
        tags = {"nas.trial": str(number), **self.trial_tags, **(tags or {})}
        if resume_of is not None:
            tags["nas.resume_of"] = str(resume_of)
        run_id = self.tracker.start_trial(number, params, tags)
        try:
            result = self._run(number, params, candidate, run_id, epochs, initial_epoch, should_prune,
                               checkpoint, resume_of, runner or self.runner, decay_from)
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM mid-trial: the MLflow run must not stay RUNNING forever.
            self.tracker.end_trial(run_id, state="interrupted", reason="interrupted by the user", metrics={}, tags={})
            raise
        except Exception as exc:
            # Not the trial's failure but ours (the tracking store, the run dir): it ends the search, and the
            # MLflow run says why instead of "interrupted by the user".
            self.tracker.end_trial(run_id, state="failed", reason=f"{type(exc).__name__}: {exc}"[:300], metrics={},
                                   tags={"nas.traceback": traceback.format_exc()})
            raise
        # Per-epoch curves keep their names; the best epoch's values get a best_ prefix so they do not
        # land as a stray point at step 0 of the same curve in the MLflow charts.
        metrics = {(f"best_{k}" if k in EPOCH_METRICS else k): v for k, v in result.metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        tags = {**result.tags, **({"nas.traceback": result.traceback} if result.traceback else {})}
        self.tracker.end_trial(run_id, state=result.state, reason=result.reason, metrics=metrics, tags=tags)
        self.reporter.trial_finished(number, result.state, result.metrics, result.reason, continues=resume_of)
        return result

    def static_costs(self, params: dict[str, Any]) -> dict[str, float]:
        """Parameters and FLOPs of the candidate `params` describe, known before training ({} for a shape that
        collapses)."""
        try:
            shape = plan(self.space.decode(params, self.data).arch)
        except InvalidArchitecture:
            return {}
        return {"params": float(shape.params), "flops": float(shape.flops)}

    def out_of_time(self) -> bool:
        """search.budget is spent: the running trial stops after this epoch and no new one starts."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def seconds_left(self) -> float | None:
        """Until search.budget's deadline (None without a budget)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def checkpoint_path(self, number: int) -> Path:
        return self.run.root / "checkpoints" / f"trial-{number}.npz"

    def _run(self, number: int, params: dict[str, Any], candidate: Any, run_id: str, epochs: int,
             initial_epoch: int, should_prune: PruneHook | None, checkpoint: bool,
             resume_of: int | None, runner: Runner, decay_from: int | None = None) -> TrialResult:
        try:
            shape = plan(candidate.arch)
        except InvalidArchitecture as exc:
            return TrialResult(TrialState.PRUNED, reason=exc.reason, metrics={"epochs_run": 0.0})
        reason = None
        if self.max_params and shape.params > self.max_params:
            reason = (f"{shape.params:,} parameters exceed space.max_params {self.max_params:,}; "
                      "rejected before training")
        elif self.budget_plan is not None:
            reason = cap_reason(shape.flops, self.budget_plan)
        for metric in STATIC_METRICS:
            bound = self.constraints.get(metric)
            value = getattr(shape, metric)
            if not reason and bound is not None and not bound.holds(value):
                reason = f"{metric} {value:,} break search.constraints.{metric} '{bound}'; rejected before training"
        if reason:  # rejected before training; its size stays in the leaderboard, to say how large it was
            return TrialResult(TrialState.PRUNED, reason=reason, metrics={
                "epochs_run": 0.0, "params": float(shape.params), "flops": float(shape.flops)})
        resume_from = self.checkpoint_path(resume_of) if resume_of is not None else None
        if resume_from is not None:
            if not resume_from.exists():
                return TrialResult(TrialState.FAILED, reason=f"cannot continue trial {resume_of}: its checkpoint "
                                   f"{resume_from} is gone", metrics={"epochs_run": 0.0})
            # the curve so far, so this trial's MLflow run shows the whole of it
            for epoch, metrics in enumerate(read_progress(resume_from)["history"], start=1):
                self.tracker.log_epoch(run_id, epoch, metrics)
        self.reporter.trial_started(number, shape.params)

        ended = [time.monotonic()]  # when the last epoch ended (the first one: when the trial began)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> str:
            self.tracker.log_epoch(run_id, epoch, metrics)
            self.reporter.epoch(number, epoch, metrics)
            if self.out_of_time():
                return "stop"  # search.budget: the trial ends here, its best epoch stands
            now = time.monotonic()
            # epoch_s: the pace the search's endgame needs at a rung (nas.backends.asha.ASHA.endgame)
            metrics, ended[0] = {**metrics, "epoch_s": now - ended[0]}, now
            verdict = should_prune(epoch, metrics) if should_prune is not None else "continue"
            return verdict if isinstance(verdict, str) else ("prune" if verdict else "continue")

        pending = self.run.pending / f"trial-{number}.keras"
        monitor = self.primary.metric if self.primary.metric in EPOCH_METRICS else "val_accuracy"
        mode = self.primary.resolved_direction if monitor == self.primary.metric else "maximize"
        task = TrialTask(number=number, candidate=candidate, seed=trial_seed(self.seed, number), epochs=epochs,
                         initial_epoch=initial_epoch, save_model_to=str(pending), monitor=monitor, mode=mode,
                         # saving a model costs ~0.3 s: skip it when the trial cannot become the new best
                         save_threshold=self.best_value if monitor == self.primary.metric else None,
                         stages=self.stages, checkpoint_to=str(self.checkpoint_path(number)) if checkpoint else None,
                         resume_from=str(resume_from) if resume_from else None, decay_from=decay_from,
                         stop_at=time.time() + self.deadline - time.monotonic() if self.deadline is not None else None,
                         measure=self.measure, measure_on=self.measure_on,
                         calibration_samples=self.calibration_samples)
        result = runner.run(task, on_epoch)
        if resume_from is not None and result.counts:
            resume_from.unlink(missing_ok=True)  # continued for good; a pause again leaves this trial's own
        result.metrics.update(params=float(shape.params), flops=float(shape.flops))
        if result.model_path:
            with self._best_lock:
                decay = (decay_from, epochs) if decay_from is not None else None
                if self._judge(number, params, Path(result.model_path), candidate, result, runner,
                               decay) and self.share_best:
                    self.tracker.log_artifacts([self.run.best / "model.keras", self.run.best / "arch.json",
                                                self.run.best / "trial.json"], "model", run_id=run_id)
        return result

    def _judge(self, number: int, params: dict[str, Any], model_path: Path, candidate: Any, result: TrialResult,
               runner: Runner, decay: tuple[int, int] | None = None) -> bool:
        """Keep the model only if this trial is the new best by the primary objective (returns whether it is). A
        paused trial (pruner asha) competes too, less a margin for validation noise (nas.trial.competing_value):
        the budget may end the search before its rung promotes it. `decay`: the (first, last) epochs of the
        endgame's learning-rate decay this trial trained with, recorded so that `nas export` replays it."""
        value = competing_value(result.state, self.primary.metric, result.metrics.get(self.primary.metric, math.nan),
                                result.metrics.get("val_samples"))
        feasible = all(math.isfinite(v := result.metrics.get(m, math.nan)) and bound.holds(v)
                       for m, bound in self.constraints.items())  # best/ holds the best that meets them
        if feasible and math.isfinite(value) and _better(value, self.best_value, self.primary.resolved_direction):
            self.best_value = value
            promote_best(self.run, model_path, candidate.arch.to_json(), {
                "trial": number, "state": result.state.value, "reason": result.reason, "score": value, "params": params,
                "metrics": result.metrics, "train": candidate.to_dict()["train"],
                "device": runner.device, "framework": runner.framework, "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **({"lr_decay": list(decay)} if decay else {}),
            })
            return True
        model_path.unlink(missing_ok=True)
        return False
