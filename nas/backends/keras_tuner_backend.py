"""The KerasTuner backend: Hyperband, Bayesian optimization or random search over the same flat space.

KerasTuner owns the loop and the sampling; its public extension point, a `Tuner` subclass overriding
`run_trial`, hands each trial's values to the shared `TrialObjective` (the same one the Optuna backend calls).
The project (oracle.json, one trial_<id>/ per trial) lives in runs/<name>/keras_tuner/.

What keras-tuner 1.4.8 does, read in its source, and what we do about it:
- `run_trial` raising `FailedTrialError` marks the trial FAILED with no retry; any other `Exception` is
  swallowed (INVALID, retried `max_retries_per_trial` times, then FAILED); `FatalError` and
  `KeyboardInterrupt` propagate. So impossible architectures raise `FailedTrialError`, and an unexpected error
  of ours travels out wrapped in a `FatalError` instead of failing every trial in silence.
- `max_consecutive_failed_trials` FAILED trials in a row raise a bare RuntimeError out of `search()`; impossible
  architectures are FAILED trials, so that limit is switched off and `search.max_failed_trials` bounds real
  errors instead, as in the Optuna backend.
- `Oracle(seed=0)` means "pick a random seed" (`seed or random.randint(...)`): the oracle gets `seed + 1`.
- `overwrite=False` silently reloads whatever project is in the directory, search space included: a marker
  with the spec hash and a comparison of the reloaded space refuse a foreign or changed project.
- The trial left running by Ctrl-C stays "ongoing" in oracle.json; the next start re-queues it with the
  same values and trial id, so a resume re-runs it and loses nothing else.
- KerasTuner writes oracle.json, tuner0.json and trial_<id>/trial.json in place (truncate, then write): a kill
  in between leaves an empty file that no rerun can reload. Ours are written to a temp file and renamed.
- Hyperband puts its budget into the trial's values (`tuner/epochs`, `tuner/initial_epoch`, `tuner/bracket`,
  `tuner/round`, and `tuner/trial_id` for a promoted config); they are split off before the objective sees
  the params. Each trial short of max_epochs leaves a checkpoint (nas.checkpoint), and a promoted config
  continues its parent's from the epoch the parent reached, as KerasTuner does from `tuner/initial_epoch`
  (from scratch only if that checkpoint is missing: a parent stopped by search.budget leaves none).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.objective import TrialObjective
from nas.rundir import RunDir, atomic_write
from nas.space import SearchSpace
from nas.spec.dims import Choice, FloatRange, IntRange
from nas.spec.model import HyperbandSpec, Spec
from nas.tf_setup import silenced_stderr
from nas.trial import TrialState, tally

with silenced_stderr():  # keras_tuner imports TensorFlow, which prints to fd 2 at import
    import keras_tuner as kt

PROJECT = "keras_tuner"  # runs/<name>/keras_tuner/
MARKER = "nas.json"  # in the project: which spec made it
RECORD = "nas.json"  # in each trial_<id>/: the objective's result (state, reason, metrics, params)
BUDGET_PREFIX = "tuner/"


def hyperparameters(space: SearchSpace) -> kt.HyperParameters:
    """The flat, static space as KerasTuner HyperParameters, one per searchable dimension, same names."""
    hp = kt.HyperParameters()
    for name, d in space.dims.items():
        if isinstance(d, Choice):
            if all(isinstance(v, bool) for v in d.values):
                hp.Boolean(name, default=d.values[0])  # hp.Choice would turn True/False into 1/0
            else:
                hp.Choice(name, list(d.values))
        elif isinstance(d, IntRange):
            # on a log scale KerasTuner reads `step` as a factor; our log ranges take every integer
            hp.Int(name, d.low, d.high, step=None if d.log else d.step, sampling="log" if d.log else "linear")
        elif isinstance(d, FloatRange):
            hp.Float(name, d.low, d.high, step=None if d.log else d.step, sampling="log" if d.log else "linear")
    return hp


def hyperband_plan(max_epochs: int, factor: int) -> list[tuple[int, int, int, int]]:
    """(bracket, round, trials, epochs per trial) of one Hyperband iteration as KerasTuner 1.4 schedules it,
    most exploratory bracket first. Fewer trials run when configs fail or the space runs out of new points."""
    brackets, e = 0, float(max_epochs)
    while e >= 1:
        brackets, e = brackets + 1, e / factor
    top = math.ceil(1 + math.log(max_epochs, factor))  # trials in the last round of the first bracket, x brackets
    plan = []
    for b in range(brackets - 1, -1, -1):
        for r in range(b + 1):
            plan.append((b, r, math.ceil(top / (b + 1) * factor ** (b - r)), math.ceil(max_epochs / factor ** (b - r))))
    return plan


def _tidy(d: Any, value: Any) -> Any:
    """A stepped float on its grid (0.3, not KerasTuner's 0.30000000000000004) for params, logs and MLflow."""
    if isinstance(d, FloatRange) and d.step and not d.log:
        return round(d.low + round((value - d.low) / d.step) * d.step, 12)
    return value


class _Stop(Exception):
    """Raised from `on_trial_end` (after KerasTuner saved the ended trial) to leave `search()`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Unexpected(kt.errors.FatalError):
    """An error inside our objective that is not a trial outcome (tracking store gone, a bug): it must stop the
    search with its own message, not be recorded by KerasTuner as one more failed trial."""


class _AtomicSaves:
    """Oracle mixin: oracle.json and each trial.json replaced whole, never half-written (see the module notes).
    Same content as KerasTuner's own saves (json.dumps of get_state()), which reload reads back."""

    def save(self) -> None:
        atomic_write(Path(self._get_oracle_fname()), json.dumps(self.get_state()))  # type: ignore[attr-defined]

    def _save_trial(self, trial: Any) -> None:
        path = Path(self._get_trial_dir(trial.trial_id)) / "trial.json"  # type: ignore[attr-defined]
        atomic_write(path, json.dumps(trial.get_state()))


class _HyperbandOracle(_AtomicSaves, kt.oracles.HyperbandOracle):
    pass


class _BayesianOracle(_AtomicSaves, kt.oracles.BayesianOptimizationOracle):
    pass


class _RandomOracle(_AtomicSaves, kt.oracles.RandomSearchOracle):
    pass


class _NasTuner(kt.Tuner):
    """A Tuner whose `run_trial` is the nas objective and whose `on_trial_end` may end the search."""

    def __init__(self, *, run_one: Callable[[Any], dict[str, float]], after: Callable[[], str | None], **kwargs: Any):
        self._run_one, self._after = run_one, after
        super().__init__(**kwargs)

    def save(self) -> None:
        self.oracle.save()  # one tuner, no distributed workers: the oracle is always ours to save
        atomic_write(Path(self._get_tuner_fname()), json.dumps(self.get_state()))

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        return self._run_one(trial)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)  # the oracle records the trial and saves the project first
        reason = self._after()
        if reason:
            raise _Stop(reason)


class KerasTunerBackend:
    """A KerasTuner project behind search.py's `Backend` seam."""

    def __init__(self, spec: Spec, space: SearchSpace, run: RunDir, spec_hash: str):
        s = spec.search
        self.spec, self.space, self.spec_hash = spec, space, spec_hash
        self.algorithm: str = s.algorithm or "hyperband"
        self.project = run.root / PROJECT
        self.primary = s.objectives[0]
        self.hyperband = s.hyperband or HyperbandSpec()
        if self.algorithm == "hyperband":
            self.epochs = self.hyperband.max_epochs or spec.train.epochs
            planned = sum(n for _, _, n, _ in hyperband_plan(self.epochs, self.hyperband.factor))
            # search.trials caps a Hyperband iteration only when the spec (or --trials) sets it
            self.cap: int | None = s.trials if "trials" in s.model_fields_set else None
            self.total = min(planned, self.cap) if self.cap else planned
        else:
            self.epochs, self.cap, self.total = spec.train.epochs, s.trials, s.trials
        self.meta = {"keras_tuner_project": str(self.project)}
        self._records: dict[str, dict[str, Any]] = {}
        self._objective: TrialObjective | None = None
        self._on_trial_done: Callable[[], Any] = lambda: None
        self._errors, self._deadline = 0, math.inf
        self.tuner = self._make_tuner()

    @classmethod
    def open(cls, spec: Spec, space: SearchSpace, run: RunDir, spec_hash: str) -> KerasTunerBackend:
        return cls(spec, space, run, spec_hash)

    # -- the project ------------------------------------------------------------------------------------

    def _make_tuner(self) -> _NasTuner:
        expected = hyperparameters(self.space)
        marker = self.project / MARKER
        existing = (self.project / "oracle.json").exists()
        if existing:
            try:
                made_by = json.loads(marker.read_text()).get("spec_hash")
            except (OSError, ValueError):
                made_by = None
            if made_by != self.spec_hash:
                what = "by a different spec" if made_by else "without a nas marker (not by this run)"
                raise NasError(f"{self.project}: this KerasTuner project was made {what}; KerasTuner would silently "
                               "reload it and mix two searches. Rerun with --new (the old run is kept aside), or "
                               "remove that folder")
        s = self.spec.search
        objective = kt.Objective(self.primary.metric, "max" if self.primary.resolved_direction == "maximize" else "min")
        common = dict(objective=objective, hyperparameters=expected, seed=s.seed + 1,  # KerasTuner reads 0 as "no seed"
                      max_retries_per_trial=0, max_consecutive_failed_trials=2**31)  # we bound errors ourselves
        oracle: kt.Oracle
        if self.algorithm == "hyperband":
            oracle = _HyperbandOracle(max_epochs=self.epochs, factor=self.hyperband.factor,
                                      hyperband_iterations=1, **common)
        elif self.algorithm == "bayesian":
            oracle = _BayesianOracle(max_trials=None, num_initial_points=max(1, s.startup_trials), **common)
        else:
            oracle = _RandomOracle(max_trials=None, **common)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ...": we say it ourselves
                tuner = _NasTuner(run_one=self._run_one, after=self._after, oracle=oracle,
                                  directory=str(self.project.parent), project_name=PROJECT, overwrite=False)
        except Exception as exc:
            raise NasError(f"{self.project}: the KerasTuner project cannot be reloaded ({type(exc).__name__}: {exc}); "
                           "rerun with --new to start over (the old run is kept aside)") from None
        if existing:
            got = [p.get_config() for p in tuner.oracle.get_space().space]
            if got != [p.get_config() for p in expected.space]:
                raise NasError(f"{self.project}: the reloaded KerasTuner search space differs from the spec's; "
                               "rerun with --new, or give the spec another `name:`")
        else:
            atomic_write(marker, json.dumps({"spec_hash": self.spec_hash, "algorithm": self.algorithm}, indent=2))
        for trial_id, trial in tuner.oracle.trials.items():
            record = self._record_path(trial_id)
            # still RUNNING: a kill cut it off, perhaps after its record but before KerasTuner saved its end;
            # it is re-run, so until then it is interrupted, whatever its record says
            if record.exists() and trial.status != "RUNNING":
                with contextlib.suppress(OSError, ValueError):
                    self._records[trial_id] = json.loads(record.read_text())
        return tuner

    def _record_path(self, trial_id: str) -> Path:
        return self.project / f"trial_{trial_id}" / RECORD

    # -- one trial ---------------------------------------------------------------------------------------

    def _run_one(self, trial: Any) -> dict[str, float]:
        assert self._objective is not None
        values = dict(trial.hyperparameters.values)
        params = {name: _tidy(d, values[name]) for name, d in self.space.dims.items()}
        budget = {k.removeprefix(BUDGET_PREFIX): v for k, v in values.items() if k.startswith(BUDGET_PREFIX)}
        epochs = int(budget.get("epochs", self.epochs))
        tags = {"nas.backend": "keras-tuner", "keras_tuner.algorithm": self.algorithm,
                "keras_tuner.trial_id": str(trial.trial_id)}
        for key, tag in (("bracket", "bracket"), ("round", "round"), ("initial_epoch", "initial_epoch"),
                         ("trial_id", "promoted_from")):
            if key in budget:
                tags[f"keras_tuner.{tag}"] = str(budget[key])
        # Hyperband: every trial short of max_epochs leaves a checkpoint; a promoted config continues its
        # parent's (tuner/trial_id) from the epoch it reached, as KerasTuner itself would from its weights.
        pausing: dict[str, Any] = {}
        if self.algorithm == "hyperband":
            parent = int(budget["trial_id"]) if "trial_id" in budget else None
            usable = parent is not None and self._objective.checkpoint_path(parent).exists()
            pausing = {"checkpoint": epochs < self.epochs, "resume_of": parent if usable else None}
        try:
            result = self._objective(int(trial.trial_id), params, epochs=epochs, initial_epoch=0, tags=tags,
                                     **pausing)
        except Exception as exc:
            raise _Unexpected(str(exc)) from exc
        state, reason = result.state, result.reason
        value = result.metrics.get(self.primary.metric, math.nan)
        if state == TrialState.FINISHED and not math.isfinite(value):
            state, reason = TrialState.DIVERGED, f"objective {self.primary.metric} is {value}"
        record = {"state": state.value, "reason": reason, "epochs": epochs, "params": params,
                  "metrics": {k: v for k, v in result.metrics.items() if math.isfinite(v)},
                  **{f"keras_tuner.{k}": v for k, v in budget.items()}}
        atomic_write(self._record_path(trial.trial_id), json.dumps(record, indent=2, default=str))
        self._records[trial.trial_id] = record
        if state != TrialState.FINISHED:
            self._errors += state == TrialState.FAILED
            raise kt.errors.FailedTrialError(reason or state.value)  # skip it: no retry
        return {self.primary.metric: float(value)}

    def _after(self) -> str | None:
        self._on_trial_done()
        if self.cap is not None and self.done() >= self.cap:
            return "budget"
        if self._errors >= self.spec.search.max_failed_trials:
            return "failures"
        if self._objective is not None and self._objective.out_of_time():
            return "time"
        if time.monotonic() >= self._deadline:
            return "timeout"
        return None

    # -- the Backend seam ----------------------------------------------------------------------------

    # KerasTuner's state lives in the run dir: never shared between machines (search.py refuses --workers > 1)
    local = True

    @property
    def study_key(self) -> str | None:
        return None

    def shared_parent(self, tracking_uri: str) -> str | None:
        return None

    def remember_parent(self, run_id: str | None, tracking_uri: str) -> None:
        pass

    def others_running(self) -> bool:
        return False

    def budget_began(self, now: float, seconds: float) -> float | None:
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"algorithm": self.algorithm}
        if self.algorithm == "hyperband":
            out.update(max_epochs=self.epochs, factor=self.hyperband.factor)
        return out

    def _state(self, trial_id: str, status: str) -> TrialState:
        record = self._records.get(trial_id)
        if record:
            if record["state"] == TrialState.FAILED and record.get("error") is False:
                return TrialState.DIVERGED  # recorded before "diverged" was a state of its own
            return TrialState(record["state"])
        return {"COMPLETED": TrialState.FINISHED, "RUNNING": TrialState.INTERRUPTED}.get(status, TrialState.FAILED)

    def _states(self) -> list[TrialState]:
        return [self._state(tid, t.status) for tid, t in self.tuner.oracle.trials.items()]

    def done(self) -> int:
        return sum(s.counts for s in self._states())

    def counts(self) -> dict[TrialState, int]:
        return tally(self._states())

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for tid, t in sorted(self.tuner.oracle.trials.items()):
            record = self._records.get(tid, {})
            state = self._state(tid, t.status)
            reason = record.get("reason") or ""
            if not record and state == "failed":  # KerasTuner's own message: a traceback, keep its last line
                reason = ((t.message or "").strip().splitlines() or [""])[-1]
            params = record.get("params") or {k: v for k, v in t.hyperparameters.values.items()
                                              if not k.startswith(BUDGET_PREFIX)}
            rows.append({"trial": int(tid), "state": state, "reason": reason, **record.get("metrics", {}),
                         **{f"param.{k}": v for k, v in params.items()}})
        return rows

    def reclaim(self) -> list[int]:
        return []  # KerasTuner re-queues the trials a dead search left running when it reloads the project

    def run(self, objective: TrialObjective, on_trial_done: Callable[[], Any]) -> str:
        """Run trials until the budget, the end of the Hyperband iteration, the timeout or the failure limit."""
        self._objective, self._on_trial_done, self._errors = objective, on_trial_done, 0
        timeout = self.spec.search.timeout
        self._deadline = time.monotonic() + timeout if timeout else math.inf
        if self.cap is not None and self.done() >= self.cap:
            return "budget"
        try:
            with warnings.catch_warnings():  # the Gaussian process' fit warnings would cut into the progress display
                warnings.filterwarnings("ignore", module=r"sklearn\.gaussian_process")
                self.tuner.search(verbose=0)
        except _Stop as stop:
            return stop.reason
        except _Unexpected as exc:
            raise exc.__cause__ from None
        if self.algorithm == "hyperband":
            return "budget"  # the Hyperband iteration is complete
        return "search space exhausted: KerasTuner found no configuration it had not tried yet"
