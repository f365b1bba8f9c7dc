"""Kills and signals on a real `nas search`: kill -9 at random moments then rerun, SIGTERM, an impatient Ctrl-C.

The claim under test is the README's: whatever moment the process dies, a rerun of the same command keeps every
finished trial exactly as it was, re-runs the trial that was cut off with the same params, and ends with the
budget the spec asked for, in Optuna, in the leaderboard and in MLflow alike.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

NAS = [sys.executable, "-m", "nas"]
DONE = ("COMPLETE", "PRUNED")


class Search:
    """One `nas search` process; output goes to files (a pipe nobody reads could block it)."""

    def __init__(self, spec: Path, runs: Path, tag: str, extra: list[str] | None = None, cwd: Path | None = None):
        self.out, self.err = runs.parent / f"{tag}.out", runs.parent / f"{tag}.err"
        env = {**os.environ, "COLUMNS": "200"}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([*NAS, "search", str(spec), "--runs-dir", str(runs), *(extra or [])],
                                         stdout=out, stderr=err, env=env, cwd=cwd)
        self.descendants: list[psutil.Process] = []

    def remember_children(self) -> None:
        try:
            self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass

    def signal(self, sig: int) -> None:
        self.remember_children()
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def orphans(self, timeout: float) -> list[psutil.Process]:
        """The processes it had started that still run `timeout` s after it ended (zombies count as gone)."""
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for p in self.descendants:
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        left.append(p)
                except psutil.NoSuchProcess:
                    pass
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def poll_trials(db: Path) -> list[tuple[int, str, int, int]]:
    """(number, state, params set, epochs reported) per trial, read-only: it must never create or lock the study."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute(
                "select t.number, t.state, (select count(*) from trial_params p where p.trial_id = t.trial_id), "
                "(select count(*) from trial_intermediate_values v where v.trial_id = t.trial_id) from trials t"
            ).fetchall()
    except sqlite3.Error:  # not created yet, or mid-migration
        return []


def wait_for(search: Search, what: str, cond: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        assert search.alive(), f"the search ended before {what}:\n{search.stdout()}\n{search.stderr()}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{search.stdout()}\n{search.stderr()}")


def study_trials(db: Path) -> dict[int, Any]:
    """The study's trials by number, through Optuna's public API (only while no search is running)."""
    import optuna

    if not db.exists():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    except KeyError:  # killed before the study was created in it
        return {}
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def mlflow_runs(runs_dir: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None, "no MLflow experiment 'tiny'"
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tiny_spec, tmp_path: Path) -> None:
    rng = random.Random(20251124)  # seeded: the same delays every run; where they land still varies with load
    spec, runs = tiny_spec(trials=5, epochs=3), tmp_path / "runs"
    db = runs / "tiny" / "study.db"
    kept: list[dict[int, Any]] = []  # trials done at each kill
    cut: list[Any] = []  # trials left RUNNING by a kill

    def kill(search: Search, where: str) -> None:
        search.signal(signal.SIGKILL)
        assert search.wait(30) == -signal.SIGKILL
        # the worker (and multiprocessing's helper) must not outlive the search and train on in the dark
        assert not search.orphans(15), f"kill -9 {where}: processes left behind"
        trials = study_trials(db)
        if trials:
            kept.append({n: t for n, t in trials.items() if t.state.name in DONE})
            cut.extend(t for t in trials.values() if t.state.name == "RUNNING")

    # 1. during start-up, once the run dir exists: the study, the MLflow parent run, the worker's spawn
    first = Search(spec, runs, "run1")
    wait_for(first, "the run dir", (runs / "tiny" / "run.json").exists)
    time.sleep(rng.uniform(0.0, 1.5))
    kill(first, "during start-up")

    # 2. mid-trial: a random moment after a trial's first epoch (of 3). On a loaded machine that moment can
    # come after the trial's end; then the kill counts as one more random kill and the next try aims again.
    for attempt in range(3):
        second = Search(spec, runs, f"run2-{attempt}")
        wait_for(second, "a trial to report an epoch",
                 lambda: any(s == "RUNNING" and epochs >= 1 for _, s, _, epochs in poll_trials(db)))
        time.sleep(rng.uniform(0.0, 0.2))
        kill(second, "mid-trial")
        mid_trial = [t for t in cut if t.intermediate_values and len(t.intermediate_values) < 3]
        if mid_trial:
            break
    assert mid_trial, "no kill landed inside a trial; the test needs one there"

    # 3. between trials: just after one more trial is recorded as done
    third = Search(spec, runs, "run3")
    before = sum(s in DONE for _, s, _, _ in poll_trials(db))
    wait_for(third, "one more trial to finish", lambda: sum(s in DONE for _, s, _, _ in poll_trials(db)) > before)
    time.sleep(rng.uniform(0.0, 0.3))
    kill(third, "between trials")

    # 4. the same command again, to the end
    last = Search(spec, runs, "run4")
    assert last.wait(300) == 0, last.stdout() + last.stderr()
    assert "Traceback" not in last.stderr()

    # Optuna: exactly the budget, nothing left running or queued
    final = study_trials(db)
    done = {n: t for n, t in final.items() if t.state.name in DONE}
    assert len(done) == 5, {n: t.state.name for n, t in final.items()}
    assert not [t for t in final.values() if t.state.name in ("RUNNING", "WAITING")]
    # every trial done before a kill is still done, with the same params and values
    for snapshot in kept:
        for n, t in snapshot.items():
            assert final[n].state == t.state and final[n].params == t.params and final[n].values == t.values
    # a trial a kill left running is settled on resume: told, when its outcome was fully recorded before the
    # kill, else re-run with the same params (as a new trial number that names it); one cut off mid-training
    # can only be re-run
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    for t in cut:
        if final[t.number].state.name in DONE:
            assert t not in mid_trial and final[t.number].params == t.params
            continue
        assert final[t.number].state.name == "FAIL"
        with warnings.catch_warnings():  # retry_history is "experimental"
            warnings.simplefilter("ignore")
            retries = [r for r in done.values() if t.number in Retry.retry_history(r)]
        assert len(retries) == 1, f"trial {t.number} was not re-run"
        if len(t.params) == len(retries[0].params):  # a kill before its params were sampled leaves none to keep
            assert retries[0].params == t.params

    # best/ comes from a done trial (a kill between its promotion and Optuna's record rolls it back)
    best = json.loads((runs / "tiny" / "best" / "metrics.json").read_text())
    assert best["trial"] in done and not (runs / "tiny" / "best.prev").exists()

    # every trial that ran to an outcome (done, or failed by the objective) appears once in the leaderboard and
    # once in MLflow under that outcome; every other trial is interrupted there, and its MLflow run KILLED
    ran = {n for n, t in final.items() if t.state.name in DONE or t.user_attrs.get("nas.state") == "failed"}
    board = pd.read_csv(runs / "tiny" / "leaderboard.csv")
    assert board["trial"].is_unique
    assert set(board[board["state"] != "interrupted"]["trial"]) == ran
    assert set(board[board["state"].isin(["finished", "pruned"])]["trial"]) <= set(done)

    # MLflow: one parent, nothing RUNNING, one child per trial that ran, and no more
    mruns = mlflow_runs(runs)
    assert not [r for r in mruns if r.info.status == "RUNNING"]
    parents = [r for r in mruns if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in mruns if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(mruns) - 1
    counted = [int(r.data.tags["nas.trial"]) for r in children if r.data.tags.get("nas.state") != "interrupted"]
    assert sorted(counted) == sorted(ran), "MLflow's trials differ from Optuna's"
    for r in children:
        if int(r.data.tags["nas.trial"]) not in ran:
            assert r.info.status == "KILLED" and r.data.tags.get("nas.state") == "interrupted"


def _mid_trial(spec: Path, runs: Path, tag: str) -> tuple[Search, int]:
    search = Search(spec, runs, tag)
    db = runs / "tiny" / "study.db"
    running = wait_for(search, "a trial to report an epoch",
                       lambda: [n for n, s, _, epochs in poll_trials(db) if s == "RUNNING" and epochs >= 1])
    return search, running[0]


@pytest.mark.slow
def test_sigterm_mid_trial_stops_cleanly_and_rerun_resumes(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=2, epochs=4), tmp_path / "runs"
    search, number = _mid_trial(spec, runs, "term")
    search.remember_children()
    assert any("nas-trial-worker" in " ".join(p.cmdline()) or "multiprocessing" in " ".join(p.cmdline())
               for p in search.descendants), "no worker process to check"
    start = time.monotonic()
    search.signal(signal.SIGTERM)
    code = search.wait(60)
    took = time.monotonic() - start
    err = search.stderr()
    assert code == 130, err  # the README's code for Ctrl-C and SIGTERM alike
    assert took < 20, f"took {took:.1f}s to stop"  # "within seconds"; generous for a loaded 2-core box
    assert "Resume with: nas search" in err and "Traceback" not in err
    assert not search.orphans(10), "the trial's worker outlived the search"
    mruns = mlflow_runs(runs)
    assert not [r for r in mruns if r.info.status == "RUNNING"]
    cut = [r for r in mruns if r.data.tags.get("nas.trial") == str(number)]
    assert len(cut) == 1 and cut[0].info.status == "KILLED" and cut[0].data.tags["nas.state"] == "interrupted"

    r = subprocess.run([*NAS, "search", str(spec), "--runs-dir", str(runs)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    board = pd.read_csv(runs / "tiny" / "leaderboard.csv")
    assert board["state"].isin(["finished", "pruned"]).sum() == 2


@pytest.mark.slow
def test_impatient_double_ctrl_c_still_exits_cleanly(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=2, epochs=4), tmp_path / "runs"
    search, _ = _mid_trial(spec, runs, "int")
    search.signal(signal.SIGINT)
    time.sleep(0.1)  # the second press lands while the first one is being handled
    search.proc.send_signal(signal.SIGINT)
    code = search.wait(60)
    err = search.stderr()
    assert code == 130, err
    assert "Resume with: nas search" in err and "Traceback" not in err
    assert not search.orphans(10)
    assert not [r for r in mlflow_runs(runs) if r.info.status == "RUNNING"]


# -- the pieces, without training ---------------------------------------------------------------------------

SMALL = """name: t
data: {source: digits}
space: {depth: {low: 1, high: 2}, filters: [8, 16]}
train: {epochs: 2, learning_rate: {low: 1e-3, high: 1e-1, log: true}}
search: {trials: 5, seed: 0, pruner: none}
"""


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize, to fake dead trials
def test_reclaim_settles_only_this_run_dirs_dead_trials(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from nas.backends import optuna_backend as ob
    from nas.spec import parse_spec

    spec = parse_spec(SMALL)
    study = ob.open_study(spec, f"sqlite:///{tmp_path / 'study.db'}")

    def running(owner: str | None, **attrs: Any) -> int:
        trial = study.ask()
        trial.suggest_float("train.learning_rate", 1e-3, 1e-1, log=True)
        if owner:
            trial.set_user_attr(ob.OWNER, owner)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return trial.number

    cut = running("me", val_accuracy=0.5)  # killed mid-training: only partial attrs
    recorded = running("me", val_accuracy=0.75, val_loss=0.5, **{ob.STATE: "finished"})  # killed before the tell
    pruned = running("me", **{ob.STATE: "pruned"})
    unstamped = running(None)  # killed before its stamp
    foreign = running("another run dir")  # a live search elsewhere on a shared storage

    assert ob.reclaim(study, spec, owner="me", local=True) == [cut, unstamped]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[recorded].state == TrialState.COMPLETE and trials[recorded].value == 0.75
    assert trials[pruned].state == TrialState.PRUNED
    assert trials[cut].state == trials[unstamped].state == TrialState.FAIL
    assert trials[foreign].state == TrialState.RUNNING
    retries = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in retries] == [cut, unstamped]
    assert retries[0].params == trials[cut].params and retries[0].user_attrs == {}  # no inherited outcome
    assert [r["state"] for r in ob.trial_rows(study)][:5] == ["interrupted", "finished", "pruned", "interrupted",
                                                             "running"]
    # in a shared storage an unstamped trial may be anyone's: left to the heartbeat
    another = running(None)
    assert ob.reclaim(study, spec, owner="me", local=False) == []
    assert study.get_trials()[another].state == TrialState.RUNNING


def test_the_run_dir_lock_refuses_a_second_search_and_dies_with_its_holder(tmp_path: Path) -> None:
    from nas.errors import RunDirError
    from nas.rundir import RunDir, claim

    run = RunDir(tmp_path / "t")
    run.root.mkdir()
    code = ("import sys, time; from pathlib import Path; from nas.rundir import RunDir, claim; "
            f"lock = claim(RunDir(Path({str(run.root)!r}))); print(lock.held, flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with pytest.raises(RunDirError, match=f"another `nas search` \\(pid {holder.pid}\\) is running"):
            claim(run)
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait(10)
        with claim(run) as lock:
            assert lock.held
    finally:
        holder.kill()
        holder.wait(10)


def test_best_is_rolled_back_when_its_trial_was_never_recorded(tmp_path: Path) -> None:
    from nas.rundir import RunDir, promote_best, settle_best

    run = RunDir(tmp_path)

    def promote(n: int) -> None:
        model = tmp_path / f"m{n}.keras"
        model.write_text(f"model {n}")
        promote_best(run, model, "{}", {"trial": n})

    def best() -> str | None:
        return (run.best / "model.keras").read_text() if run.best.exists() else None

    promote(0)
    settle_best(run, set())  # trial 0 was killed before the backend recorded it: nothing to go back to
    assert best() is None and not (tmp_path / "best.prev").exists()
    promote(1)
    settle_best(run, {1})
    assert best() == "model 1" and not (tmp_path / "best.prev").exists()
    promote(2)
    settle_best(run, {1})  # trial 2 cut off: best/ goes back to trial 1's model
    assert best() == "model 1"
    promote(3)
    promote(4)  # no settle between (a caller without one): best.prev/ still holds the last confirmed best
    settle_best(run, {1, 3})
    assert best() == "model 1"


def test_mlflow_finds_its_parent_by_run_uid_and_closes_runs_of_interrupted_trials(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    import nas.tracking as T

    uri = T.default_tracking_uri(tmp_path)
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\n")

    def start(tracker: T.MlflowTracker) -> str:
        return tracker.start_search(run_name="t", spec_path=spec, spec_hash="h", resume_run_id=None, params={},
                                    tags={}, run_uid="uid-1")

    first = T.MlflowTracker(uri, "t")
    parent = start(first)  # killed before the run dir remembered this id
    finished = first.start_trial(0, {}, {})
    first.end_trial(finished, state="finished", reason=None, metrics={}, tags={})  # ... and before the backend heard
    kept = first.start_trial(1, {}, {})
    first.end_trial(kept, state="finished", reason=None, metrics={}, tags={})
    again = T.MlflowTracker(uri, "t")
    assert start(again) == parent
    assert again.close_stale_trials([0]) == 1
    c = MlflowClient(uri)
    assert c.get_run(finished).info.status == "KILLED" and c.get_run(finished).data.tags["nas.state"] == "interrupted"
    assert c.get_run(kept).info.status == "FINISHED"
    assert again.close_stale_trials([0]) == 0


def test_keras_tuner_state_is_never_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KerasTuner truncates its state files and rewrites them in place; a kill in between left an empty
    oracle.json or trial.json, and every rerun refused the project. A save cut short now leaves the old file."""
    from nas.backends.keras_tuner_backend import KerasTunerBackend
    from nas.trial import TrialResult
    from nas.rundir import RunDir
    from nas.space import SearchSpace
    from nas.spec import parse_spec

    spec = parse_spec(SMALL.replace("search: {trials: 5, seed: 0, pruner: none}",
                                    "search: {backend: keras-tuner, algorithm: random, trials: 3, seed: 0}"))
    run = RunDir(tmp_path / "t")
    run.root.mkdir()

    def open_backend() -> KerasTunerBackend:
        return KerasTunerBackend.open(spec, SearchSpace(spec), run, "h")

    first = open_backend()
    class Finishes:
        def __call__(self, number: int, params: Any, **kw: Any) -> TrialResult:
            return TrialResult("finished", None, {"val_accuracy": 0.5})

        def out_of_time(self) -> bool:
            return False

    first.run(Finishes(), lambda: None)  # type: ignore[arg-type]
    assert first.done() == 3

    def killed(src: Any, dst: Any) -> None:  # the process dies after writing the temp file, before the rename
        raise SystemExit(-9)

    monkeypatch.setattr(os, "replace", killed)
    for save in (first.tuner.save, lambda: first.tuner.oracle._save_trial(next(iter(first.tuner.oracle.trials.values())))):
        with pytest.raises(SystemExit):
            save()
    monkeypatch.undo()
    assert open_backend().done() == 3  # reloads: every state file is whole


def test_a_kill_while_mlflow_creates_its_store_leaves_no_broken_store(tmp_path: Path) -> None:
    """The first search in a runs dir creates mlflow.db, migrating it for seconds. A kill then used to leave a
    half-migrated store that every later search failed on ("internal error"), for good."""
    import nas.tracking as T

    runs = tmp_path / "runs"
    code = "import sys; from pathlib import Path; import nas.tracking as T; T.MlflowTracker(sys.argv[1], 'x')"
    proc = subprocess.Popen([sys.executable, "-c", code, T.default_tracking_uri(runs)])
    deadline = time.monotonic() + 120
    while not list(runs.glob(".mlflow.db.new-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # mid-migration: the store is created under a temporary name
    proc.wait(10)
    assert not (runs / "mlflow.db").exists()
    tracker = T.MlflowTracker(T.default_tracking_uri(runs), "x")
    assert tracker.experiment_id and (runs / "mlflow.db").is_file()
    assert not list(runs.glob(".mlflow.db.new-*"))  # the dead creation's leftovers are gone


@pytest.mark.slow
def test_sigterm_while_starting_exits_130_not_0(tiny_spec, tmp_path: Path) -> None:
    """A stop before the first trial (here: while MLflow creates its store) is an interrupt too: exit 130 and
    a resume hint, where the CLI used to exit 0 in silence; the store is not left half-made."""
    spec, runs = tiny_spec(trials=1, epochs=1), tmp_path / "runs"
    search = Search(spec, runs, "start")
    wait_for(search, "the MLflow store's creation", lambda: list(runs.glob(".mlflow.db.new-*")), timeout=120)
    search.signal(signal.SIGTERM)
    assert search.wait(60) == 130, search.stderr()
    assert "Resume with: nas search" in search.stderr() and "Traceback" not in search.stderr()
    assert not (runs / "mlflow.db").exists()
