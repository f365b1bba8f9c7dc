"""`nas search`: wire spec, data, run directory, tracking, runner and backend together, and report.

The order matters for the user's contract: everything that can fail on bad input (spec, tracking URI,
data, run directory) fails before the first epoch; once trials run, nothing done is ever lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console

from nas.errors import Interrupted, NasError
from nas.rundir import RunDir, atomic_write, claim, clear_pending, prepare, remember_test_split, settle_best
from nas.spec.loader import LoadedSpec
from nas.trial import TrialState

if TYPE_CHECKING:
    from nas.tracking import Tracker  # imported where used: it loads the MLflow client

COUNTED = {s.value for s in TrialState if s.counts}
FINISH_RESERVE_S = 60.0  # of search.budget, kept for the final measurement and the report (at most 5% of it)


@dataclass(frozen=True)
class SearchOptions:
    runs_dir: Path = Path("runs")
    storage: str | None = None
    tracking_uri: str | None = None
    new: bool = False
    trials: int | None = None
    timeout: float | None = None
    budget: float | None = None
    inline: bool = False
    workers: int | None = None  # overrides search.workers
    gpus: str | None = None  # "0,2": the GPUs workers train on (default: every visible one)


@dataclass(frozen=True)
class SearchSummary:
    run: RunDir
    stop_reason: str
    counts: dict[Any, int]  # nas.trial.TrialState -> trials
    best_trial: int | None
    best_metrics: dict[str, Any]


def _with_overrides(loaded: LoadedSpec, opts: SearchOptions) -> LoadedSpec:
    updates: dict[str, Any] = {}
    if opts.trials is not None:
        updates["trials"] = opts.trials
    if opts.timeout is not None:
        updates["timeout"] = opts.timeout
    if opts.budget is not None:
        updates["budget"] = opts.budget
    if opts.workers is not None:
        updates["workers"] = opts.workers
    if not updates:
        return loaded
    spec = loaded.spec.model_copy(update={"search": loaded.spec.search.model_copy(update=updates)})
    return dataclasses.replace(loaded, spec=spec)


def resolve_tracking_uri(loaded: LoadedSpec, opts: SearchOptions) -> str:
    from nas.tracking import default_tracking_uri

    uri = opts.tracking_uri or loaded.spec.tracking.uri
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative sqlite path in the spec is relative to the spec file, like data paths
        rel = uri.removeprefix("sqlite:///")
        base = loaded.base_dir if not opts.tracking_uri else Path.cwd()
        uri = f"sqlite:///{(base / rel).resolve().as_posix()}"
    return uri or default_tracking_uri(opts.runs_dir)


class Backend(Protocol):
    """A search backend (optuna_backend.OptunaBackend, keras_tuner_backend.KerasTunerBackend): it owns the loop
    and the sampling, calls the shared TrialObjective once per trial, and answers for its trials."""

    meta: dict[str, Any]  # what run.json remembers so a resume reopens the same state
    total: int  # trials the search aims to finish
    epochs: int  # most epochs one trial trains

    def describe(self) -> dict[str, Any]: ...  # backend settings, logged on the MLflow parent run
    def done(self) -> int: ...  # trials that count toward `total` (see TrialState.counts)
    def counts(self) -> dict[TrialState, int]: ...  # trials by state
    def rows(self) -> list[dict[str, Any]]: ...  # leaderboard rows, see nas.leaderboard.frame
    def run(self, objective: Any, on_trial_done: Callable[[], Any]) -> str: ...  # why it stopped
    def reclaim(self) -> list[int]: ...  # settle trials a dead search of this run dir left running; re-queued ones
    # a study several machines share (Optuna on an external storage); the run dir's own otherwise
    local: bool  # the state is this run dir's alone
    @property
    def study_key(self) -> str | None: ...  # names a shared study (None when local)
    def shared_parent(self, tracking_uri: str) -> str | None: ...  # its MLflow parent run, as the study recorded it
    def remember_parent(self, run_id: str | None, tracking_uri: str) -> None: ...
    def others_running(self) -> bool: ...  # other machines still run trials of it
    # search.budget of a shared study: when it began (the first machine's start, as a Unix time), else None
    def budget_began(self, now: float, seconds: float) -> float | None: ...


def open_backend(loaded: LoadedSpec, space: Any, run_dir: RunDir, opts: SearchOptions, resuming: bool) -> Backend:
    spec = loaded.spec
    if spec.search.backend == "keras-tuner":
        from nas.backends.keras_tuner_backend import KerasTunerBackend

        return KerasTunerBackend.open(spec, space, run_dir, loaded.hash)
    from nas.backends.optuna_backend import OptunaBackend

    return OptunaBackend.open(spec, space, run_dir, loaded.hash, storage=opts.storage, new=opts.new,
                              resuming=resuming)


class _Interrupts:
    """Ctrl-C and SIGTERM stop a search the same clean way, so a scheduler's kill loses nothing.

    The first signal raises KeyboardInterrupt; from then on both are ignored, so an impatient second Ctrl-C
    can neither cut the cleanup short (MLflow runs left RUNNING) nor, arriving after Python resets its
    handlers at exit, kill the process by SIGINT. After an interrupt they stay ignored: the process is on
    its way out. Otherwise the previous handlers come back.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _Interrupts:
        self.prev = {s: signal.getsignal(s) for s in self.SIGNALS}
        self.interrupted = False
        for s in self.SIGNALS:
            signal.signal(s, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        self.interrupted = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if not self.interrupted:
            for s, handler in self.prev.items():
                signal.signal(s, handler)


def run(spec_path: str | Path, opts: SearchOptions, console: Console) -> SearchSummary:
    """Run or resume a search. Holds the run dir's lock throughout; see _Interrupts for Ctrl-C and SIGTERM."""
    with _Interrupts(), contextlib.ExitStack() as held:
        try:
            return _run(spec_path, opts, console, held)
        except KeyboardInterrupt:  # while starting or measuring the best model; mid-search, _run says more
            # as Interrupted, not bare: the CLI would turn a bare KeyboardInterrupt into exit 0
            raise Interrupted(f"interrupted; nothing finished is lost. Resume with: nas search {spec_path}") from None


@dataclass
class _Search:
    """What the phases of one `nas search` share; filled in as they go."""

    spec_path: str | Path
    opts: SearchOptions
    console: Console
    loaded: LoadedSpec
    uri: str
    tracker: Tracker
    splits: Any  # nas.data.splits.Splits
    info: Any  # nas.space.DataInfo
    description: str
    space: Any  # nas.space.SearchSpace
    gpus: list[str] | None = None  # --gpus, checked
    run_dir: RunDir = dataclasses.field(default=None)  # type: ignore[assignment]
    backend: Backend = dataclasses.field(default=None)  # type: ignore[assignment]
    runner: Any = None  # nas.worker.Runner, once started: the first worker's, which also probes and measures
    runners: list[Any] = dataclasses.field(default_factory=list)  # one per worker (--workers)
    test_fingerprint: str | None = None
    files_lock: Any = dataclasses.field(default_factory=threading.Lock)

    @property
    def spec(self) -> Any:
        return self.loaded.spec

    def save_leaderboard(self) -> Any:
        """After each trial (and on resume or Ctrl-C): confirm or roll back best/, write the leaderboard. Workers
        call it as their trials end, one at a time."""
        from nas.leaderboard import frame, write

        with self.files_lock:
            rows = self.backend.rows()
            settle_best(self.run_dir, {r["trial"] for r in rows if r["state"] in COUNTED},
                        {r["trial"] for r in rows if r["state"] == "running"})
            df = frame(rows, self.spec.search.objectives)
            if not df.empty:
                write(df, self.run_dir.leaderboard)
            return df


def _run(spec_path: str | Path, opts: SearchOptions, console: Console, held: contextlib.ExitStack) -> SearchSummary:
    t0 = time.monotonic()  # search.budget counts from here
    s = _load(spec_path, opts, console)  # everything bad input can break fails here, before a run dir is claimed
    resuming, lock_held = _claim(s, held)
    parent = _start_parent_run(s, resuming)
    reporter = None
    try:  # from here on an interrupt ends the MLflow parent run as KILLED
        s.run_dir.write_meta(mlflow_parent_run_id=parent, tracking_uri=s.uri, **s.backend.meta)
        if resuming:
            _settle_previous_session(s, lock_held)
        s.runners = _make_runners(s)
        s.runner = s.runners[0]
        deadline, budget_plan = _plan(s, t0)
        reporter, objective = _make_objective(s, deadline, budget_plan)
        started = time.monotonic()
        stop_reason = s.backend.run(objective, on_trial_done=s.save_leaderboard)
    except KeyboardInterrupt:
        _abandon(s, reporter, "KILLED")
        raise Interrupted(
            f"interrupted: {s.backend.done()} of {s.backend.total} trials are kept in {s.run_dir.root} (the running "
            f"trial was discarded). Resume with: nas search {spec_path}"
        ) from None
    except BaseException:
        _abandon(s, reporter, "FAILED")
        raise
    reporter.close()
    return _finish(s, stop_reason, time.monotonic() - started)


def _load(spec_path: str | Path, opts: SearchOptions, console: Console) -> _Search:
    """Spec, tracking store and data: read and checked, nothing written to the run directory yet."""
    from nas.data_info import load_splits
    from nas.space import SearchSpace
    from nas.spec.loader import load_spec
    from nas.tracking import MlflowTracker, NullTracker, default_artifact_root

    loaded = _with_overrides(load_spec(spec_path), opts)
    spec = loaded.spec
    from nas import framework as fw

    fw.require(spec.train.backend, loaded.where("train.backend"))  # before anything is written or trained
    # What a previous session of this run recorded (read only: the run dir is prepared after the data loads,
    # so that a spec whose data path is wrong never claims a run directory).
    previous = RunDir(opts.runs_dir / spec.name).read_meta()
    if opts.new or previous.get("spec_hash") != loaded.hash:
        previous = {}
    uri = resolve_tracking_uri(loaded, opts) if (opts.tracking_uri or spec.tracking.uri or not previous) \
        else previous.get("tracking_uri") or resolve_tracking_uri(loaded, opts)
    tracker: Tracker = NullTracker()
    if spec.tracking.enabled:  # connects (and fails fast on a bad URI) before any data loading or training
        tracker = MlflowTracker(uri, spec.tracking.experiment or spec.name, default_artifact_root(opts.runs_dir))

    with console.status("loading data"):
        splits, info, description = load_splits(loaded)
    console.print(f"data: {description}; train {len(splits.train.y)}, val {len(splits.val.y)}, "
                  f"test {len(splits.test.y)} (held out), input {info.input_shape}, {info.num_classes} classes")
    if opts.storage and spec.search.backend != "optuna":
        raise NasError(f"--storage is for the optuna backend, but {loaded.path} sets search.backend "
                       f"{spec.search.backend!r}, which keeps its state in "
                       f"{opts.runs_dir / spec.name / 'keras_tuner'}/; "
                       "drop --storage")
    gpus = _check_workers(loaded, opts)
    space = SearchSpace(spec)
    if spec.search.constraints:
        from nas.validate import check_static_constraints

        check_static_constraints(loaded, space, info)  # every candidate would be rejected untrained
    return _Search(spec_path, opts, console, loaded, uri, tracker, splits, info, description, space, gpus=gpus)


def _check_workers(loaded: LoadedSpec, opts: SearchOptions) -> list[str] | None:
    """--workers and --gpus: refused here, before anything is written, where they cannot work. Returns the GPUs
    --gpus picks (None without it)."""
    from nas.parallel import parse_gpus, visible_gpus

    spec, workers = loaded.spec, loaded.spec.search.workers
    where = "--workers" if opts.workers is not None else f"{loaded.where('search.workers')}: search.workers"
    if workers > 1 and spec.search.backend != "optuna":
        raise NasError(f"{where} is {workers}, but search.backend {spec.search.backend!r} runs one trial at a time; "
                       "set `search.backend: optuna` to train several trials at once (on one machine or many)")
    if workers > 1 and (opts.inline or not spec.search.isolate_trials):
        what = "--inline" if opts.inline else "search.isolate_trials: false"
        raise NasError(f"{where} is {workers}, but {what} trains in this process, one trial at a time; "
                       f"drop {what} (each worker then trains in a process of its own) or use one worker")
    return parse_gpus(opts.gpus, visible_gpus()) if opts.gpus is not None else None


def _claim(s: _Search, held: contextlib.ExitStack) -> tuple[bool, bool]:
    """Prepare and lock the run directory, check the test split against it, open the backend.
    Returns (resuming, whether the lock proves every earlier search of this run dir dead)."""
    s.run_dir, resuming = prepare(s.opts.runs_dir, s.loaded, new=s.opts.new)
    lock = held.enter_context(claim(s.run_dir))
    s.test_fingerprint = remember_test_split(s.run_dir, s.splits.test, s.spec.data.source)  # changed data: refused
    s.backend = open_backend(s.loaded, s.space, s.run_dir, s.opts, resuming)
    if hasattr(s.backend, "close"):
        held.callback(s.backend.close)  # runs before the lock is released
    return resuming, lock.held


def _start_parent_run(s: _Search, resuming: bool) -> str | None:
    """The search's MLflow parent run: this run dir's on a resume; in a study several machines share, the one
    the first machine started (so every machine's trials nest under one parent)."""
    spec, meta = s.spec, s.run_dir.read_meta()
    shared = s.backend.shared_parent(s.uri)
    parent = s.tracker.start_search(
        run_name=spec.name, spec_path=s.loaded.path, spec_hash=s.loaded.hash,
        resume_run_id=shared or (meta.get("mlflow_parent_run_id") if resuming else None), run_uid=meta.get("uid"),
        params={"backend": spec.search.backend, "framework": spec.train.backend, **s.backend.describe(),
                "trials": s.backend.total, "epochs": s.backend.epochs, "seed": spec.search.seed,
                "space_dims": len(s.space.dims), "data": s.description, "test_fingerprint": s.test_fingerprint},
        tags={"nas.run_dir": str(s.run_dir.root.resolve()),
              **({"nas.study": s.backend.study_key} if s.backend.study_key else {})},
    )
    key = s.backend.study_key
    if key and parent:  # a study several machines may share: one parent run for all of them
        parent = s.tracker.join_shared_parent(key)
        s.backend.remember_parent(parent, s.uri)
    return parent


def _end_parent_run(s: _Search, status: str) -> None:
    """End the MLflow parent run, unless other machines still run trials of a shared study: the last one to
    stop ends it."""
    others = s.backend.others_running()
    key = s.backend.study_key
    if key:  # a parent run that raced ours at the start is merged into the search's now at the latest
        parent = s.tracker.join_shared_parent(key, everyone=not others)
        if parent:
            s.backend.remember_parent(parent, s.uri)
            s.run_dir.write_meta(mlflow_parent_run_id=parent)
    if others:
        s.console.print("other machines still run trials of this study: the MLflow parent run stays RUNNING "
                        "until the last of them ends")
        return
    s.tracker.end_search(status)


def _settle_previous_session(s: _Search, lock_held: bool) -> None:
    """A search killed outright (kill -9, power loss) left its trial marked running. Holding the lock proves that
    process dead, so the trial is settled now rather than after Optuna's heartbeat grace."""
    requeued = s.backend.reclaim() if lock_held else []
    df = s.save_leaderboard()  # also rolls best/ back if it came from a trial cut off before it was recorded
    shared = not s.backend.local  # other machines' running trials are alive: not ours to close
    stale = s.tracker.close_stale_trials(list(df[df["state"] == "interrupted"]["trial"]) if not df.empty else [],
                                         owner=str(s.run_dir.read_meta().get("uid")) if shared else None)
    s.console.print(f"resuming {s.run_dir.root}: {s.backend.done()} of {s.backend.total} trials already done"
                    + (f"; {stale} interrupted MLflow run(s) closed" if stale else "")
                    + (f"; re-running killed trial(s) {', '.join(map(str, requeued))} with the same params"
                       if requeued else ""))


def _make_runners(s: _Search) -> list[Any]:
    """One runner per worker, each placed on its GPU or its share of the CPU (nas.parallel); worker processes
    start when their first trial (or the budget probe) needs them."""
    from nas.framework import Setup
    from nas.parallel import places
    from nas.worker import InlineRunner, ProcessRunner

    spec, setup = s.spec, Setup.of(s.spec.train)
    if s.opts.inline or not spec.search.isolate_trials:
        return [InlineRunner(s.splits, setup, trial_timeout=spec.search.trial_timeout)]
    where = places(spec.search.workers, s.gpus)  # asks nvidia-smi only when there are several workers
    if len(where) > 1:
        s.console.print(f"workers: {len(where)} trials at once, on " + "; ".join(
            f"worker {p.index}: {p.describe()}" for p in where))
    logs = [s.run_dir.root / ("worker.log" if p.index == 0 else f"worker-{p.index}.log") for p in where]
    return [ProcessRunner(s.splits, setup=dataclasses.replace(setup, threads=p.threads), env=p.env,
                          max_tasks=spec.search.worker_max_trials, log_path=str(log),
                          trial_timeout=spec.search.trial_timeout) for p, log in zip(where, logs, strict=True)]


def _close_runners(s: _Search) -> None:
    for runner in s.runners or ([s.runner] if s.runner is not None else []):
        runner.close()


def _plan(s: _Search, t0: float) -> tuple[float | None, Any]:
    """search.budget: the deadline every trial stops at, and the plan (printed; its FLOPs cap applies)."""
    from nas.budget import plan_budget

    seconds = s.spec.search.budget
    if not seconds:
        return None, None
    # trials stop a little early, so that measuring the winner and writing the report fit in the budget too
    deadline = t0 + seconds - min(FINISH_RESERVE_S, 0.05 * seconds)
    started = time.time() - (time.monotonic() - t0)  # this search's start, as a Unix time
    began = s.backend.budget_began(started, seconds)
    if began is not None:  # machines sharing a study share its budget: it counts from the first one's start
        deadline -= max(0.0, started - began)
    try:
        with s.console.status("planning the budget: probing the cheapest and the dearest candidates"):
            budget_plan = plan_budget(s.spec, s.info, s.splits, s.runner, seconds, epochs=s.backend.epochs,
                                      trials_done=s.backend.done())
        budget_plan = dataclasses.replace(budget_plan, spent_s=time.monotonic() - t0)
    except NasError:
        raise
    except Exception as exc:  # the budget still holds; only the estimate is missing
        s.console.print(f"[yellow]warning:[/] the budget probe failed ({type(exc).__name__}: {exc}); search.budget "
                        "still ends the search on time, but there is no plan and no FLOPs cap")
        return deadline, None
    for line in budget_plan.lines():
        s.console.print(line, markup=False)
    s.tracker.log_search_metrics({"budget_expected_candidates": budget_plan.expected()[0]})
    return deadline, budget_plan


def _make_objective(s: _Search, deadline: float | None = None, budget_plan: Any = None) -> tuple[Any, Any]:
    """The reporter (already showing progress) and the objective every backend calls once per trial."""
    from nas.budget import early_rungs
    from nas.objective import TrialObjective
    from nas.parallel import Serialized
    from nas.progress import make_reporter

    spec = s.spec
    reporter = make_reporter(s.console)
    primary = spec.search.objectives[0]
    best_value = current_best_value(s.run_dir, primary.metric)
    tracker: Any = s.tracker
    if len(s.runners) > 1:  # every worker's thread reports and logs through these: one call at a time
        reporter, tracker = Serialized(reporter), Serialized(s.tracker)
    objective = TrialObjective(space=s.space, data=s.info, runner=s.runner, tracker=tracker, reporter=reporter,
                               run=s.run_dir, objectives=spec.search.objectives, seed=spec.search.seed,
                               best_value=best_value, max_params=spec.space.max_params, deadline=deadline,
                               budget_plan=budget_plan,
                               stages=early_rungs(spec, len(s.splits.train.y), s.backend.epochs),
                               runners=s.runners or None, best_lock=s.files_lock, share_best=not s.backend.local,
                               constraints=spec.search.constraints, measure=tuple(sorted(spec.search.measured)),
                               measure_on=spec.search.measure_on,
                               calibration_samples=spec.export.calibration_samples,
                               trial_tags={"nas.host": socket.gethostname(),
                                           "nas.owner": str(s.run_dir.read_meta().get("uid", ""))})
    reporter.search_started(total=s.backend.total, counts=s.backend.counts(), epochs=s.backend.epochs,
                            best=current_best_value(s.run_dir, primary.metric, competing=False)
                            if primary.metric == "val_accuracy" else None)
    return reporter, objective


def _abandon(s: _Search, reporter: Any, status: str) -> None:
    """The search stops early (Ctrl-C, SIGTERM, an error of ours): keep what is done, end the parent run."""
    if reporter is not None:
        reporter.close()
    _close_runners(s)
    try:
        if status == "KILLED":
            s.save_leaderboard()
            clear_pending(s.run_dir)
        _end_parent_run(s, status)
    except NasError:  # the study's database is away (that may be why we stop): MLflow still hears how it ended
        s.tracker.end_search(status)


def _finish(s: _Search, stop_reason: str, elapsed: float) -> SearchSummary:
    """Measure the winner on the held-out test split, print the results, and say how the search ended."""
    from nas.leaderboard import reasons, table
    from nas.trial import describe_tally

    spec, run_dir, console = s.spec, s.run_dir, s.console
    clear_pending(run_dir)
    df = s.save_leaderboard()
    counts = s.backend.counts()
    finished = counts[TrialState.FINISHED]
    try:
        if "pareto" in df:  # several objectives: the front's runs can be filtered in MLflow (tags.nas.pareto)
            s.tracker.tag_trials({int(r.trial): {"nas.pareto": "true" if r.pareto else "false"}
                                  for r in df.itertuples() if r.state == "finished"})
        best_trial, best_metrics = _measure_best(run_dir, s.runner, spec, s.loaded.hash, s.description, s.tracker,
                                                 console)
    finally:
        _close_runners(s)
        _end_parent_run(s, "FINISHED" if finished and stop_reason != "failures" else "FAILED")

    if not df.empty:
        console.print(table(df))
    if "pareto" in df and df["pareto"].any():
        front = df[df["pareto"].astype(bool)]
        console.print(table(front, top=len(front), title=f"Pareto front: {len(front)} trials no other beats in every "
                            f"objective ({', '.join(o.metric for o in spec.search.objectives)})"))
    head = _why(stop_reason, spec.search.max_failed_trials)
    tally = describe_tally(counts)
    console.print(f"[bold]{head}[/] in {elapsed:.0f}s: {tally}")
    if spec.report:  # also when no trial finished: the report says why; a report error only warns
        from nas.report import report_after_search

        report_after_search(run_dir.root, console)
    if not finished and best_trial is None:
        raise NasError(f"no trial finished, so there is no best model ({head}: {tally}).{_common(reasons(df))}\n"
                       "Fix the space (see `nas validate`) or the training settings, then rerun.")
    if best_trial is not None:
        paused = ("; it was paused at a rung when the search ended, and led every finished trial by more than the "
                  "noise of the validation split" if best_metrics.get("state") == TrialState.PAUSED else "")
        console.print(f"best: trial {best_trial}, val_accuracy {best_metrics['val_accuracy']:.4f}, "
                      f"test_accuracy {best_metrics['test_accuracy']:.4f} (held out){paused}")
    console.print(f"outputs: {run_dir.root}/ (leaderboard.csv, best/model.keras, best/arch.json, best/metrics.json)")
    if spec.tracking.enabled:
        console.print(f"MLflow: experiment {spec.tracking.experiment or spec.name!r} in {s.uri}; browse with `nas ui`")
    if stop_reason == "failures":
        # Non-zero although the finished trials and best/ stand: the search did not do what was asked, and a
        # script (`nas search ... && nas export ...`) must notice. A rerun resumes with a fresh failure allowance.
        raise NasError(f"the search {head} ({tally}); the finished trials and best/ are kept."
                       f"{_common(reasons(df, ('failed',)))}\nFix the cause (a failed trial's MLflow run keeps its "
                       "traceback in the nas.traceback tag), then rerun the same command to resume"
                       + ("; export.after_search was skipped" if spec.export.after_search else ""))
    if spec.export.after_search and best_trial is not None:
        from nas.export.pipeline import ExportOptions, export

        console.print(f"export.after_search: exporting trial {best_trial}")
        export(run_dir.root, ExportOptions(), console)
        if spec.report:  # again, now with the export manifest's table
            from nas.report import report_after_search

            report_after_search(run_dir.root, console)
    return SearchSummary(run_dir, stop_reason, counts, best_trial, best_metrics)


def _measure_best(run_dir: RunDir, runner: Any, spec: Any, spec_hash: str, description: str, tracker: Any,
                  console: Console) -> tuple[int | None, dict[str, Any]]:
    """Measure best/model.keras once on val and the held-out test split; write metrics.json; log to MLflow."""
    best_file = run_dir.best / "model.keras"
    try:
        trial_info = json.loads((run_dir.best / "trial.json").read_text())
    except (OSError, ValueError):
        return None, {}
    if not best_file.exists():
        return None, {}
    with console.status("measuring the best model on the held-out test split"):
        try:
            measured = runner.evaluate(str(best_file), ("val", "test"))
        except Exception as exc:
            raise NasError(f"could not evaluate {best_file} ({exc}); the search results are kept, see "
                           f"{run_dir.root / 'worker.log'} and rerun the command to retry") from None
    best_trial = int(trial_info["trial"])
    best_metrics = {
        "trial": best_trial,
        "val_accuracy_search": trial_info["metrics"].get("val_accuracy"),
        # "paused": its best epoch beat every finished trial while it waited at a rung (pruner asha)
        "state": trial_info.get("state", "finished"),
        **measured,
        "best_epoch": trial_info["metrics"].get("best_epoch"),
        # the endgame's finalist: its learning rate decayed over epochs (first, last]; nas export replays it
        **({"lr_decay": trial_info["lr_decay"]} if trial_info.get("lr_decay") else {}),
        "params": trial_info["metrics"].get("params"),
        "flops": trial_info["metrics"].get("flops"),
        "framework": trial_info.get("framework", "tensorflow"),
        "objectives": [o.model_dump() for o in spec.search.objectives],
        "data": description,
        "spec_hash": spec_hash,
        "test_fingerprint": run_dir.read_meta().get("test_fingerprint"),  # same value, same test split
        "note": "val_accuracy is what the search optimized; test_accuracy is measured once, here, on data no trial saw",
    }
    atomic_write(run_dir.best / "metrics.json", json.dumps(best_metrics, indent=2))
    tracker.log_artifacts([best_file, run_dir.best / "arch.json", run_dir.best / "metrics.json",
                           run_dir.best / "trial.json"], "best")
    tracker.log_artifacts([run_dir.leaderboard], None)
    tracker.log_search_metrics({"best_val_accuracy": measured.get("val_accuracy", math.nan),
                                "best_test_accuracy": measured.get("test_accuracy", math.nan),
                                "best_trial": float(best_trial)})
    return best_trial, best_metrics


def current_best_value(run: RunDir, metric: str, competing: bool = True) -> float | None:
    """The primary objective of the model in best/, if there is one: what a new trial must beat, its competing
    value (nas.trial.competing_value) where trial.json records one; with `competing=False` the value itself."""
    try:
        info = json.loads((run.best / "trial.json").read_text())
        value = info["score"] if competing and "score" in info else info["metrics"].get(metric)
    except (OSError, ValueError, KeyError):
        return None
    return float(value) if value is not None and math.isfinite(value) else None


def _common(lines: str) -> str:
    return f" Most common reasons:\n{lines}" if lines else ""


def _why(reason: str, max_failed: int) -> str:
    return {"budget": "search complete", "timeout": "search.timeout reached", "time": "search.budget reached",
            "failures": f"stopped after {max_failed} failed trials (search.max_failed_trials)"}.get(reason, reason)
