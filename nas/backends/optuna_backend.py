"""The Optuna backend: a define-by-run objective over the static flat space, with resume and retries.

Storage is an RDBStorage with a heartbeat, so a trial whose process was SIGKILLed is turned into FAIL once
its heartbeat is older than the grace period and re-run with the same params
(RetryHeartbeatStaleTrialCallback) instead of staying RUNNING forever. A resume in the same run dir does not
wait for that: its lock proves the earlier process dead, so `reclaim` settles that process's trials at once.
The trial budget counts COMPLETE + PRUNED trials over the whole study, so reruns and (later) several
workers on one study all stop at `search.trials`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState as OptunaState

from nas.backends.asha import ASHA, EPOCHS, FINALIST, FROM_RUNG, PAUSED_AT, RESUME_OF, ROOT
from nas.backends.pareto import CURVE, ParetoPruner
from nas.backends.storage import DatabaseAway, first_line, make_storage, redact, retry_dead_trial
from nas.budget import share_at
from nas.errors import NasError
from nas.objective import TrialObjective
from nas.rundir import RunDir
from nas.schedule import resolve_warmup
from nas.space import SearchSpace
from nas.spec.dims import Choice, FloatRange, IntRange
from nas.spec.loader import flat_keys
from nas.spec.model import MEASURED_METRICS, SearchSpec, Spec
from nas.trial import TrialState, competing_value, tally

DONE_STATES = (OptunaState.COMPLETE, OptunaState.PRUNED)  # the trials that count toward search.trials
BOOTSTRAP = 2  # under search.budget: peers a rung needs before it promotes anyone (Optuna's bootstrap_count)
SPEC_KEYS = "nas.spec_keys"  # study attr: the spec's keys (JSON), to say what differs on a machine that joins
PARENT_RUN, TRACKING_URI = "nas.mlflow_parent_run_id", "nas.tracking_uri"  # study attrs, shared storage only
BUDGET_BEGAN = "nas.budget_began"  # study attr, shared storage only: when search.budget began (Unix time)
SURPLUS = "nas.surplus"  # user attr: dropped before training, see Surplus
OWNER = "nas.owner"  # user attr: the uid of the run dir whose search runs the trial
STATE = "nas.state"  # user attr, written last: the objective's outcome is fully recorded on the trial
class TrialFailed(Exception):
    """Raised from the objective so Optuna records FAIL; caught by study.optimize via `catch`."""


class Surplus(Exception):
    """A trial another machine made unnecessary: started in the same instant as the one that reached
    search.trials. Recorded as FAIL with SURPLUS set, and left out of every count and row."""


def make_sampler(s: SearchSpec, offset: int = 0, parallel: bool = False) -> optuna.samplers.BaseSampler:
    """`offset` (trials already in the study) shifts the seed on resume: a resumed search must not
    replay the random startup draws of the first session and so repeat trials it already ran. `parallel`:
    TPE counts running trials as bad ones (constant liar), so workers sampling at once do not all pick the
    same promising region."""
    n0 = s.startup_trials
    s = s.model_copy(update={"seed": s.seed + offset})
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=n0,
                                          constant_liar=parallel)
    if s.sampler == "nsga2":
        # generations small enough that a search of search.trials sees several of them
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, min(50, s.trials // 4)))
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "cmaes":
        # CMA-ES handles the numeric dims; categorical ones are sampled independently at random
        return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=n0)
    if s.sampler == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NasError("search.sampler: 'gp' needs PyTorch, which is not installed; run `pip install -e '.[gp]'` "
                           "(or `make install`), or choose sampler tpe") from None
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=n0)
    return optuna.samplers.QMCSampler(seed=s.seed, scramble=True)


def make_pruner(s: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    # Under a budget no trial is promoted for being early: a rung promotes only once BOOTSTRAP peers have reached
    # it (the first ones to arrive are pruned there, cheaply, on the rung's subset) and then only its top third.
    # Without a budget the first trial of each rung is promoted, as Optuna does by default.
    bootstrap = BOOTSTRAP if s.budget is not None else 0
    if s.pruner in ("asha", "pareto"):
        # nas.backends.asha decides, with pauses that Optuna's pruners lack; nas.backends.pareto, on several objectives
        return optuna.pruners.NopPruner()
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_epochs)
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, s.warmup_epochs), reduction_factor=3,
                                                      bootstrap_count=bootstrap)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.warmup_epochs), max_resource=epochs,
                                              reduction_factor=3, bootstrap_count=bootstrap)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, d in space.dims.items():
        if isinstance(d, Choice):
            params[name] = trial.suggest_categorical(name, list(d.values))
        elif isinstance(d, IntRange):
            params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, FloatRange):
            params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return params


def open_study(spec: Spec, storage_url: str, study_name: str | None = None,
               storage: optuna.storages.BaseStorage | None = None, parallel: bool = False) -> optuna.Study:
    """`parallel`: trials of this study may run at once (several workers or machines)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = optuna.create_study(
            study_name=study_name or spec.name,
            storage=storage or make_storage(storage_url),
            sampler=make_sampler(spec.search),
            pruner=make_pruner(spec.search, spec.train.epochs),
            directions=[o.resolved_direction for o in spec.search.objectives],
            load_if_exists=True,
        )
    except NasError:
        raise
    except Exception as exc:  # driver missing, unreachable database, directions changed under one name ...
        raise NasError(f"Optuna storage {redact(storage_url)!r} cannot be used: {type(exc).__name__}: "
                       f"{first_line(exc)}. "
                       "Fix the --storage URL (is the database server running and reachable?), or start a "
                       "separate study with --new") from None
    if study.trials or parallel:
        study.sampler = make_sampler(spec.search, offset=len(study.trials), parallel=parallel)
    return study


def _changed(stored: Any, keys: dict[str, Any]) -> str:
    """" (changed: search.trials 20 -> 30, ...)" between the study's spec keys and this spec's."""
    try:
        before = json.loads(stored)
    except (TypeError, ValueError):
        return ""
    now = json.loads(json.dumps(keys, sort_keys=True, default=str))
    diffs = [f"{k} {before.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    return f" (changed: {'; '.join(diffs[:12])}{'; ...' if len(diffs) > 12 else ''})" if diffs else ""


def count(study: optuna.Study, *states: OptunaState) -> int:
    """Trials in `states`, a configuration once: a trial that continues a paused one is not a new trial."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if RESUME_OF not in t.user_attrs)


def make_asha(spec: Spec) -> ASHA | None:
    s = spec.search
    return ASHA(s.warmup_epochs, spec.train.epochs, s.objectives[0].resolved_direction == "maximize") \
        if s.pruner == "asha" and len(s.objectives) == 1 else None


def run_search(study: optuna.Study, spec: Spec, space: SearchSpace, objective: TrialObjective,
               on_trial_done: Callable[[], None], owner: str | None = None, heartbeat: bool = True) -> str:
    """Run trials until the budget, the timeout or the failure limit. Returns why it stopped.
    `owner` (the run dir's uid) is stamped on each trial, so a later resume knows which trials were its own.

    One loop per worker (`objective.runners`): the first in this thread, the others in threads of their own.
    Before each trial a worker asks `next_step` whether the study (every worker's and every machine's trials)
    still needs one: search.trials counts finished configurations plus those running, so N workers never
    overshoot it; a worker with nothing to start waits while trials run elsewhere, since one of them may fail
    and need a replacement, or die with its machine (its heartbeat goes stale and it is re-queued here).
    Without a heartbeat (a journal: storage) another process's RUNNING trial may be dead for good, so only this
    process's own running trials count then."""
    s = spec.search
    objectives = s.objectives
    single = len(objectives) == 1
    errors = 0  # trials that failed through an error (not divergence): bounded by max_failed_trials
    stop_reason = "budget"
    asha = make_asha(spec)
    pareto = ParetoPruner.for_objectives(objectives, s.warmup_epochs, s.startup_trials) \
        if s.pruner == "pareto" else None
    lock = threading.Lock()  # guards errors, stop_reason, starting and the decision to start a trial
    stop = threading.Event()
    starting = 0  # trials this process decided to start that are not RUNNING in the storage yet
    mine: set[int] = set()  # trials running in this process
    local = threading.local()
    timeout_at = time.monotonic() + s.timeout if s.timeout else None
    runners: list[Any] = list(getattr(objective, "runners", None) or [None])  # one per worker (--workers)

    def fn(trial: optuna.Trial) -> Any:
        nonlocal errors, starting
        with lock:
            starting -= 1  # it is RUNNING in the storage now, counted there
            local.counted = True
            mine.add(trial.number)
            local.number = trial.number
        attrs = trial.user_attrs  # one storage read: those queued with the trial (ASHA.queue) are all it needs
        resume_of = attrs.get(RESUME_OF)
        if resume_of is None and _surplus(study, trial.number, s.trials):
            trial.set_user_attr(SURPLUS, True)
            raise Surplus
        if owner:
            trial.set_user_attr(OWNER, owner)
        params = suggest(trial, space)
        costs = objective.static_costs(params) if pareto is not None else {}
        for key, value in costs.items():  # before training: peers of the pareto pruner compare them
            trial.set_user_attr(key, value)
        curve: dict[str, float] = {}
        if resume_of is not None:  # a promoted paused trial: its curve so far is this trial's too
            parent = study.get_trials(deepcopy=False)[resume_of]
            for step, value in sorted(parent.intermediate_values.items()):
                trial.report(value, step)
        paused_at: list[int] = []

        def should_prune(epoch: int, metrics: dict[str, float]) -> bool | str:
            if pareto is not None:
                curve[str(epoch)] = metrics.get(pareto.metric, math.nan)
                trial.set_user_attr(CURVE, curve)
                why = pareto.decide(study, trial.number, epoch, curve[str(epoch)], costs)
                return f"prune: {why}" if why else False
            value = metrics.get(objectives[0].metric, math.nan)
            if not math.isfinite(value):
                return False
            trial.report(value, epoch)
            if asha is not None:
                if attrs.get(FINALIST):
                    return "continue"  # the endgame's finalist: no rung pauses it again
                verdict = asha.decide(study, trial.number, epoch)
                if verdict == "continue" and epoch in asha.levels and \
                        yield_to_endgame(int(attrs.get(ROOT, trial.number)), epoch, value,
                                         metrics.get("epoch_s", math.nan)):
                    verdict = "pause"
                if verdict == "pause":
                    paused_at.append(epoch)
                return verdict
            return trial.should_prune()

        tags = {"nas.backend": "optuna", **local.tags}
        pausing: dict[str, Any] = {"checkpoint": True, "resume_of": resume_of} if asha is not None else {}
        if EPOCHS in attrs:  # the endgame's finalist: it decays its learning rate after its pause
            pausing["decay_from"] = int(attrs[FROM_RUNG])
        result = objective(trial.number, params, epochs=int(attrs.get(EPOCHS, spec.train.epochs)),
                           should_prune=should_prune if single or pareto is not None else None, tags=tags,
                           **({"runner": local.runner} if local.runner is not None else {}), **pausing)
        if paused_at and result.state == TrialState.PAUSED:
            trial.set_user_attr(PAUSED_AT, paused_at[-1])
        for key in ("params", "flops", "epochs_run", "wall_time_s", "val_samples", "val_accuracy", "val_loss",
                    "accuracy", "loss", *MEASURED_METRICS, "measure_s"):
            if key in result.metrics and math.isfinite(result.metrics[key]):
                trial.set_user_attr(key, result.metrics[key])
        # search.constraints as Optuna's samplers take them (tpe, nsga2 and gp steer by them; random and qmc only
        # record them): each constraint's excess, <= 0 when it holds; a metric a pruned trial never reached, 1
        for metric, bound in s.constraints.items():
            value = result.metrics.get(metric, math.nan)
            trial.set_constraint(metric, bound.excess(value) if math.isfinite(value) else 1.0)
        if result.reason:
            trial.set_user_attr("reason", result.reason)
        trial.set_user_attr(STATE, result.state.value)  # last: with it, `reclaim` can finish the trial from its attrs
        # Optuna's COMPLETE + PRUNED are what counts toward search.trials (see TrialState.counts). A divergence is
        # told as PRUNED: a verdict on the params, so TPE learns from it (TPE ignores FAIL) and a search where
        # every trial diverges ends. A failure is FAIL: a new trial replaces it, up to max_failed_trials.
        if result.state == TrialState.FAILED:
            with lock:
                errors += 1
            raise TrialFailed(result.reason)
        if result.state != TrialState.FINISHED:
            raise optuna.TrialPruned(result.reason)
        values = result.values(objectives)
        return values[0] if single else values

    def after_trial(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        nonlocal stop_reason
        on_trial_done()
        with lock:
            if errors >= s.max_failed_trials and not stop.is_set():
                stop_reason = "failures"
                stop.set()
            elif objective.out_of_time() and not stop.is_set():
                stop_reason = "time"
                stop.set()

    def next_step() -> str:
        """Under the lock: "run" a trial, "wait" (trials run elsewhere that may need a replacement) or "stop"."""
        nonlocal stop_reason
        if stop.is_set():
            return "stop"
        if objective.out_of_time():
            stop_reason = "time"
            return "stop"
        if timeout_at is not None and time.monotonic() >= timeout_at:
            return "stop"
        trials = study.get_trials(deepcopy=False, states=(*DONE_STATES, OptunaState.RUNNING, OptunaState.WAITING))
        if any(t.state == OptunaState.WAITING for t in trials):
            return "run"  # a dead trial's retry or a promotion: it goes before any new configuration
        if asha is not None and endgame(study):
            return "run"  # the budget is nearly spent: the best paused trial finishes instead of a new one starting
        if asha is not None and promote(study):
            return "run"  # a paused trial its rung now promotes goes on before any new one, past search.trials too
        new = [t for t in trials if RESUME_OF not in t.user_attrs]
        done = sum(1 for t in new if t.state in DONE_STATES)
        if done >= s.trials:
            return "stop"
        running = sum(1 for t in new if t.state == OptunaState.RUNNING and (heartbeat or t.number in mine))
        return "run" if done + running + starting < s.trials else "wait"

    def promote(study: optuna.Study) -> bool:
        assert asha is not None
        promoted = asha.next_promotion(study)
        if promoted is not None:
            ASHA.queue(study, promoted)
        return promoted is not None

    def share(epoch: int) -> float:
        return share_at(objective.stages, epoch)

    reserve = s.endgame * s.budget if s.budget else 0.0  # search.endgame: the budget's last share

    def queue_finalist(finalist: optuna.trial.FrozenTrial, left: float) -> None:
        """Queue the endgame's finalist. With search.endgame on and a plain constant learning rate it trains on to
        the deadline (past train.epochs), its learning rate decaying to ~0 over the epochs it has left (a
        warmup-stable-decay schedule whose stable phase ends now); early stopping still ends it once it stops
        improving. A schedule planned over train.epochs would change its course mid-way: such a finalist only
        finishes its epochs."""
        assert asha is not None
        epochs = None
        if s.endgame > 0 and space.value("train.schedule", finalist.params) == "constant" and \
                resolve_warmup("constant", spec.train.warmup) == 0:
            epochs = asha.epochs_within(finalist, left, share)
        ASHA.queue(study, finalist, finalist=True, epochs=epochs)

    def endgame(study: optuna.Study) -> bool:
        assert asha is not None
        left = objective.seconds_left()
        if left is None:
            return False
        finalist = asha.endgame(study, left, share, reserve=reserve)
        if finalist is not None:
            queue_finalist(finalist, left)
        return finalist is not None

    def yield_to_endgame(config: int, epoch: int, value: float, epoch_s: float) -> bool:
        """At a rung a running trial (of configuration `config`, its lineage's root) passes: True (it pauses) when
        going on to its next stop would leave the best paused trial too little time to finish, which is then
        queued to go on next."""
        assert asha is not None
        left = objective.seconds_left()
        if left is None or not math.isfinite(epoch_s):
            return False

        then = epoch_s / share(epoch) * sum(share(e) for e in range(epoch + 1, asha.next_stop(epoch) + 1))
        with lock:
            finalist = asha.endgame(study, left, share, then=then, behind=(config, epoch, value), reserve=reserve)
            if finalist is not None:
                queue_finalist(finalist, left)
        return finalist is not None

    def work(index: int, runner: Any) -> None:
        nonlocal starting
        local.runner = runner
        local.tags = {"nas.worker": str(index)} if len(runners) > 1 else {}
        while True:
            with lock:
                step = next_step()
                if step == "run":
                    starting += 1
                    local.counted = False
            if step == "stop":
                return
            if step == "wait":
                _fail_stale(study)  # a dead machine's trial: failed here and re-queued, so someone runs it again
                stop.wait(2.0)
                continue
            try:
                study.optimize(fn, n_trials=1, callbacks=[after_trial], catch=(TrialFailed, Surplus))
            finally:
                with lock:
                    if not local.counted:  # the trial never started (the storage failed before it)
                        starting -= 1
                    else:
                        mine.discard(local.number)

    if count(study, *DONE_STATES) < s.trials:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # Optuna logs each caught failure; we report it ourselves
        try:
            _run_workers(work, runners, stop)
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
    if stop_reason == "budget" and count(study, *DONE_STATES) < s.trials:
        stop_reason = "timeout"
    return stop_reason


def _surplus(study: optuna.Study, number: int, trials: int) -> bool:
    """Whether new trial `number` is one too many: the trials numbered before it (finished, or running and not
    failed) already make search.trials. Trial numbers are handed out by the storage, one at a time, so of two
    machines that both decided to start the last trial, exactly the later one stands down."""
    earlier = [t for t in study.get_trials(deepcopy=False, states=(*DONE_STATES, OptunaState.RUNNING))
               if t.number < number and RESUME_OF not in t.user_attrs and not t.user_attrs.get(SURPLUS)]
    return len(earlier) >= trials


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _run_workers(work: Callable[[int, Any], None], runners: list[Any], stop: threading.Event) -> None:
    """Worker 0 in this thread; the others in threads of their own. Ctrl-C (which only this thread receives)
    or an error in any worker stops them all: each running trial is cut off at once and recorded as
    interrupted, then the first error (or the KeyboardInterrupt) is raised here."""
    if len(runners) == 1:
        work(0, runners[0])
        return
    errors: list[BaseException] = []

    def guarded(index: int, runner: Any) -> None:
        try:
            work(index, runner)
        except BaseException as exc:  # KeyboardInterrupt raised by an aborted runner included
            errors.append(exc)
            stop.set()
            for other in runners:
                other.abort()

    threads = [threading.Thread(target=guarded, args=(i, r), name=f"nas-worker-{i}", daemon=True)
               for i, r in enumerate(runners) if i > 0]
    for t in threads:
        t.start()
    try:
        guarded(0, runners[0])
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for runner in runners:
            runner.abort()
        for t in threads:
            t.join()
        raise
    if errors:  # a real error says more than the KeyboardInterrupts it caused in the other workers
        raise next((e for e in errors if not isinstance(e, KeyboardInterrupt)), errors[0])


def study_winner(storage_url: str, study_name: str, spec: Spec) -> optuna.trial.FrozenTrial | None:
    """The trial with the best primary objective in a (shared) study, or None: a finished one, or a paused one that
    no trial continued (pruner asha; by its competing value, as best/ is chosen, where no constraints apply)."""
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
    objective = spec.search.objectives[0]
    by = continued(study)

    def value(t: optuna.trial.FrozenTrial) -> float:
        if t.state == OptunaState.COMPLETE:
            return float(t.values[0]) if t.values else math.nan
        if PAUSED_AT in t.user_attrs and t.number not in by and not spec.search.constraints:
            return competing_value(TrialState.PAUSED, objective.metric,
                                   float(t.user_attrs.get(objective.metric, math.nan)), t.user_attrs.get("val_samples"))
        return math.nan

    done = [t for t in study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED))
            if math.isfinite(value(t)) and not t.user_attrs.get(SURPLUS)]
    if not done:
        return None
    pick = max if objective.resolved_direction == "maximize" else min
    return pick(done, key=value)


def continued(study: optuna.Study) -> dict[int, int]:
    """Paused trial -> the trial that continues it (pruner asha)."""
    return {int(t.user_attrs[RESUME_OF]): t.number for t in study.get_trials(deepcopy=False)
            if RESUME_OF in t.user_attrs and t.state != OptunaState.FAIL}


def trial_state(t: optuna.trial.FrozenTrial, continued_by: dict[int, int] | None = None) -> str:
    """A nas TrialState value, "running" / "waiting" for a trial still under way, or "continued" for a paused
    trial that a later trial continues (its configuration is counted there, not twice)."""
    if continued_by and t.number in continued_by:
        return "continued"
    recorded = t.user_attrs.get(STATE)
    if t.state == OptunaState.FAIL:
        # failed means the objective said so; otherwise Ctrl-C or a dead process cut it off (even one that
        # recorded "finished" but died before Optuna heard: that trial is re-run, so it must not count)
        return TrialState.FAILED if recorded == TrialState.FAILED else TrialState.INTERRUPTED
    if t.state == OptunaState.PRUNED and recorded == TrialState.FAILED:
        return TrialState.DIVERGED  # recorded before "diverged" was a state of its own
    if t.state in DONE_STATES:
        return recorded or {OptunaState.COMPLETE: TrialState.FINISHED, OptunaState.PRUNED: TrialState.PRUNED}[t.state]
    return t.state.name.lower()


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Leaderboard rows (see nas.leaderboard.frame) from the study's trials."""
    rows = []
    by = continued(study)
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(SURPLUS):
            continue
        reason = t.user_attrs.get("reason", "")
        if t.number in by:
            reason = f"{reason.split(';')[0]}; continued by trial {by[t.number]}"
        rows.append({"trial": t.number, "state": trial_state(t, by), "reason": reason,
                     **{k: v for k, v in t.user_attrs.items() if not k.startswith("nas.") and k != "reason"},
                     **({"continues": t.user_attrs[RESUME_OF]} if RESUME_OF in t.user_attrs else {}),
                     **({"feasible": all(v <= 0 for v in t.constraints.values())}
                        if t.constraints and t.state == OptunaState.COMPLETE else {}),
                     **{f"param.{k}": v for k, v in t.params.items()}})
    return rows


def reclaim(study: optuna.Study, spec: Spec, owner: str | None, local: bool) -> list[int]:
    """Settle the RUNNING trials of this run dir's dead searches; return the numbers of those re-queued.

    Call only while holding the run dir's lock (rundir.claim): no live process of this run dir exists, so its
    RUNNING trials are dead, not slow. Ours are those stamped with `owner`, and, in the run dir's own
    study.db, also unstamped ones (killed before the stamp, or made before stamps existed). Another run dir's
    trials in a shared storage may be alive: they are left to the heartbeat.
    A trial whose outcome was fully recorded (STATE set) died between that and Optuna's tell; it is told now,
    so the training it did is kept. Any other is failed and re-queued with the same params.
    """
    objectives = spec.search.objectives
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        stamp = t.user_attrs.get(OWNER)
        if not (stamp == owner if stamp else local):
            continue
        recorded = t.user_attrs.get(STATE)
        values = [t.user_attrs.get(o.metric) for o in objectives]
        told = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        try:
            if recorded == TrialState.FINISHED and len(told) == len(values):
                study.tell(t.number, told if len(told) > 1 else told[0])
            elif recorded in (TrialState.PRUNED, TrialState.PAUSED, TrialState.DIVERGED, TrialState.FAILED):
                study.tell(t.number, state=OptunaState.FAIL if recorded == TrialState.FAILED else OptunaState.PRUNED)
            else:
                study.tell(t.number, state=OptunaState.FAIL)
                retry_dead_trial(study, t)
                requeued.append(t.number)
        except ValueError:  # settled meanwhile by another process's heartbeat check ("Cannot tell a FAIL trial")
            continue
    return requeued


class OptunaBackend:
    """The Optuna study behind search.py's `Backend` seam."""

    def __init__(self, spec: Spec, space: SearchSpace, study: optuna.Study, meta: dict[str, Any]):
        self.spec, self.space, self.study = spec, space, study
        self.meta = meta  # remembered in run.json, so a resume finds the same storage and study
        self.total, self.epochs = spec.search.trials, spec.train.epochs
        self.owner: str | None = None  # the run dir's uid, stamped on each trial
        self.local = False  # the storage is the run dir's own study.db
        self._storage: Any = None

    @classmethod
    def open(cls, spec: Spec, space: SearchSpace, run: RunDir, spec_hash: str, *, storage: str | None,
             new: bool, resuming: bool) -> OptunaBackend:
        meta = run.read_meta()
        local_storage = f"sqlite:///{run.study_db.resolve().as_posix()}"
        storage_url = storage or meta.get("storage") or local_storage
        if resuming and storage and meta.get("storage") and storage != meta["storage"]:
            raise NasError(f"{run.root}: this search is stored in {redact(meta['storage'])!r}, not "
                           f"{redact(storage)!r}; rerun with the same --storage, or start over with --new")
        # One run dir, one study. A shared external storage gets a fresh study name after --new.
        study_name = meta.get("study_name") or (
            spec.name if storage_url == local_storage or not new else f"{spec.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            storage_obj = make_storage(storage_url)
        except NasError:
            raise
        except Exception:  # open_study turns the storage's own failures into a message
            storage_obj = None
        study = open_study(spec, storage_url, study_name, storage_obj,
                           parallel=spec.search.workers > 1 or storage_url != local_storage)
        stored_hash = study.user_attrs.get("nas.spec_hash")
        keys = flat_keys(spec)
        if stored_hash and stored_hash != spec_hash:
            raise NasError(f"study {study_name!r} in {redact(storage_url)} was created by a different spec"
                           f"{_changed(study.user_attrs.get(SPEC_KEYS), keys)}; use the same spec on every machine "
                           "that joins this search, or rerun with --new (a separate study) or give the spec another "
                           "`name:`")
        if not stored_hash:
            study.set_user_attr("nas.spec_hash", spec_hash)
            study.set_user_attr(SPEC_KEYS, json.dumps(keys, sort_keys=True, default=str))
        backend = cls(spec, space, study, {"storage": storage_url, "study_name": study_name})
        backend.owner, backend.local = meta.get("uid"), storage_url == local_storage
        backend._storage = storage_obj
        return backend

    def close(self) -> None:
        """Leave the run dir's own SQLite study in SQLite's default journal mode: WAL's -wal and -shm files go,
        and readers that come later (`nas status`, `nas report`, the dashboard) open it without writing any file
        into the run directory. A search killed outright leaves it in WAL mode, which every reader handles."""
        engine = getattr(self._storage, "engine", None)
        if not self.local or engine is None:
            return
        engine.dispose()  # the pool's connections would keep the database in WAL mode
        try:
            with engine.connect() as con:
                con.exec_driver_sql("PRAGMA journal_mode=DELETE")
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # another reader holds it open: it stays in WAL mode, which is just as readable
        finally:
            engine.dispose()

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.spec.search.sampler, "pruner": self.spec.search.pruner}

    @property
    def study_key(self) -> str | None:
        """Names a study that several machines may share (None for the run dir's own): a hash of the storage URL
        without its password, and the study's name."""
        if self.local:
            return None
        import hashlib

        url = redact(self.meta["storage"])
        return hashlib.sha256(f"{url}#{self.meta['study_name']}".encode()).hexdigest()[:16]

    def shared_parent(self, tracking_uri: str) -> str | None:
        """The MLflow parent run of a study that several machines share (None for the run dir's own study): a
        machine that joins nests its trials under it, found through the study, not through a run directory."""
        attrs = self.study.user_attrs
        if self.local or attrs.get(TRACKING_URI) != tracking_uri:
            return None
        return attrs.get(PARENT_RUN)

    def remember_parent(self, run_id: str | None, tracking_uri: str) -> None:
        if self.local or not run_id or self.shared_parent(tracking_uri) == run_id:
            return
        self.study.set_user_attr(PARENT_RUN, run_id)
        self.study.set_user_attr(TRACKING_URI, tracking_uri)

    def budget_began(self, now: float, seconds: float) -> float | None:
        """When search.budget began for every machine of a shared study: the first one's start (`now` for
        that one). A budget that has run out entirely is a new session: it begins again now."""
        if self.local:
            return None
        began = self.study.user_attrs.get(BUDGET_BEGAN)
        if not isinstance(began, (int, float)) or now - began >= seconds:
            self.study.set_user_attr(BUDGET_BEGAN, now)
            return now
        return float(began)

    def others_running(self) -> bool:
        """Trials of other machines (other run dirs) still running in a shared study."""
        if self.local:
            return False
        return any(t.user_attrs.get(OWNER) not in (None, self.owner)
                   for t in self.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)))

    def done(self) -> int:
        return count(self.study, *DONE_STATES)

    def counts(self) -> dict[TrialState, int]:
        by = continued(self.study)
        return tally(trial_state(t, by) for t in self.study.get_trials(deepcopy=False)
                     if not t.user_attrs.get(SURPLUS))

    def rows(self) -> list[dict[str, Any]]:
        return trial_rows(self.study)

    def reclaim(self) -> list[int]:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # no "Trial N failed" warnings for what we explain
        try:
            return reclaim(self.study, self.spec, self.owner, self.local)
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)

    def run(self, objective: TrialObjective, on_trial_done: Callable[[], None]) -> str:
        try:
            return run_search(self.study, self.spec, self.space, objective, on_trial_done, owner=self.owner,
                              heartbeat=isinstance(self._storage, optuna.storages.RDBStorage))
        except Exception:
            gave_up = getattr(self._storage, "gave_up", "")
            if gave_up:  # the database went away for good; Optuna's own cleanup may have failed in odd ways on it
                raise DatabaseAway(gave_up) from None
            raise
