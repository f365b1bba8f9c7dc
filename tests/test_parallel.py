"""Several trials at once on one machine: `--workers N` (nas.parallel, the worker loops in the Optuna backend)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from nas.errors import NasError
from nas.parallel import Place, parse_gpus, places
from tests.test_kills import Search, mlflow_runs, poll_trials, study_trials, wait_for

NAS = [sys.executable, "-m", "nas"]
DONE = ("COMPLETE", "PRUNED")


def test_workers_are_spread_over_gpus_round_robin() -> None:
    assert [p.gpu for p in places(5, visible=["0", "1"])] == ["0", "1", "0", "1", "0"]
    assert places(3, gpus=["2"], visible=["0", "1", "2"])[2].env == {"CUDA_VISIBLE_DEVICES": "2"}
    # one worker keeps the framework's own view of the GPUs unless --gpus picks one
    assert places(1, visible=["0", "1"]) == [Place(0)]
    assert places(1, gpus=["1"], visible=["0", "1"]) == [Place(0, gpu="1")]


def test_workers_on_a_cpu_divide_its_cores() -> None:
    assert [p.threads for p in places(2, visible=[], cores=8)] == [4, 4]
    assert [p.threads for p in places(3, visible=[], cores=2)] == [1, 1, 1]  # never zero threads
    assert places(1, visible=[], cores=8) == [Place(0)]  # one worker: all cores, as before workers existed
    assert places(2, visible=[], cores=8)[0].env == {}


def test_gpus_that_do_not_exist_are_refused_with_the_visible_ones() -> None:
    with pytest.raises(NasError, match=r"GPU 3 does not exist; the visible GPUs are 0, 1"):
        parse_gpus("0,3", ["0", "1"])
    with pytest.raises(NasError, match="no GPU is visible"):
        parse_gpus("0", [])
    with pytest.raises(NasError, match="expected GPU indices"):
        parse_gpus(",", ["0"])
    assert parse_gpus("1", ["0", "1"]) == ["1"]
    assert parse_gpus(None, []) is None


def _nas(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NAS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""})


def test_bad_worker_settings_fail_before_any_training(tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec()
    runs = tmp_path / "runs"
    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "0")
    assert r.returncode == 2 and "--workers 0: expected 1 or more" in r.stderr, r.stderr
    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "2", "--gpus", "3")
    assert r.returncode == 2 and "--gpus 3: no GPU is visible" in r.stderr, r.stderr
    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "2", "--inline")
    assert r.returncode == 2 and "drop --inline" in r.stderr, r.stderr
    kt = tiny_spec(name="kt", extra="")
    kt.write_text(kt.read_text().replace("  sampler: tpe\n  pruner: none\n", "  backend: keras-tuner\n"
                                         "  algorithm: random\n").replace("  startup_trials: 2\n", ""))
    r = _nas("search", str(kt), "--runs-dir", str(runs), "--workers", "2")
    assert r.returncode == 2 and "set `search.backend: optuna`" in r.stderr, r.stderr
    assert not (runs / "tiny" / "study.db").exists() and not (runs / "kt").exists()  # nothing claimed


def _worker_processes(search: Search) -> list[psutil.Process]:
    """The search's trial worker processes (multiprocessing spawn children, not its resource tracker)."""
    try:
        children = psutil.Process(search.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def _running(db: Path, trained: int = 0) -> int:
    """How many trials of the study in `db` run and have reported at least `trained` epochs."""
    return sum(1 for _, state, _, epochs in poll_trials(db) if state == "RUNNING" and epochs >= trained)


def _wait_for_two_training(search: Search, db: Path) -> None:
    """Until two trials of the study in `db` have each trained an epoch and still run."""
    wait_for(search, "two trials training at once", lambda: _running(db, trained=1) >= 2, timeout=400)


def _kill_a_worker_mid_trial(search: Search, db: Path) -> None:
    """SIGKILL one worker while it is inside a trial. Workers outlive their trials, so a worker seen training a
    moment ago may be idle between trials by the time the signal lands (a race that once failed CI): freeze both
    workers, give the search a moment to record whatever they had already sent, and kill only if two trials are
    still running; otherwise thaw them and try again."""
    for _ in range(20):
        _wait_for_two_training(search, db)
        workers = _worker_processes(search)
        assert len(workers) == 2, workers
        for w in workers:
            w.suspend()
        time.sleep(2)
        if _running(db) >= 2:
            workers[1].send_signal(signal.SIGKILL)
            workers[0].resume()
            return
        for w in workers:
            w.resume()
    raise AssertionError("never caught two workers inside their trials at once")


@pytest.mark.slow
def test_two_workers_train_at_once_and_count_trials_exactly(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=6, epochs=4), tmp_path / "runs"
    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "2", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workers: 2 trials at once" in r.stdout and "CPU, 1 thread" in r.stdout

    trials = study_trials(runs / "tiny" / "study.db")
    assert sum(t.state.name in DONE for t in trials.values()) == 6  # search.trials across workers, not per worker
    assert len(trials) == 6, "no trial beyond search.trials was started"

    found = mlflow_runs(runs)
    parents = [x for x in found if x.data.tags.get("nas.kind") == "search"]
    children = [x for x in found if x.data.tags.get("nas.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6 and all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert {c.data.tags["nas.worker"] for c in children} == {"0", "1"}
    assert all(c.info.status != "RUNNING" for c in children)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    overlaps = sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    assert overlaps >= 1, f"no two trials ran at the same time: {spans}"

    board = pd.read_csv(runs / "tiny" / "leaderboard.csv")
    assert len(board) == 6
    best = board.sort_values("val_accuracy", ascending=False).iloc[0]
    assert (runs / "tiny" / "best" / "model.keras").exists()
    assert f'"trial": {int(best["trial"])}' in (runs / "tiny" / "best" / "trial.json").read_text()
    assert not (runs / "tiny" / "best.prev").exists()


@pytest.mark.slow
def test_a_killed_worker_fails_one_trial_and_the_search_goes_on(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=5, epochs=6), tmp_path / "runs"
    db = runs / "tiny" / "study.db"
    search = Search(spec, runs, "w2", extra=["--workers", "2"])
    _kill_a_worker_mid_trial(search, db)
    assert search.wait(600) == 0, search.stdout() + search.stderr()

    trials = study_trials(db)
    failed = [t for t in trials.values() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "killed by SIGKILL" in failed[0].user_attrs["reason"]
    assert sum(t.state.name in DONE for t in trials.values()) == 5  # a replacement made up for it
    assert all(r.info.status != "RUNNING" for r in mlflow_runs(runs))


@pytest.mark.slow
def test_four_workers_share_the_default_sqlite_study_without_locking_errors(tiny_spec, tmp_path: Path) -> None:
    """A stress test of the run dir's SQLite study: 4 workers, 40 one-epoch trials, every one of them recorded."""
    spec, runs = tiny_spec(trials=40, epochs=1), tmp_path / "runs"
    t0 = time.monotonic()
    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "4", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "locked" not in r.stdout + r.stderr
    trials = study_trials(runs / "tiny" / "study.db")
    assert len(trials) == 40 and all(t.state.name in DONE for t in trials.values())
    log = "".join(p.read_text() for p in (runs / "tiny").glob("worker*.log"))
    assert "locked" not in log
    assert len(mlflow_runs(runs)) == 41, f"{time.monotonic() - t0:.0f}s"


@pytest.mark.slow
def test_ctrl_c_under_two_workers_stops_both_trials_cleanly_and_a_rerun_resumes(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=4, epochs=100), tmp_path / "runs"
    db = runs / "tiny" / "study.db"
    search = Search(spec, runs, "w2", extra=["--workers", "2"])
    _wait_for_two_training(search, db)
    search.signal(signal.SIGINT)
    assert search.wait(120) == 130, search.stdout() + search.stderr()
    assert "interrupted" in search.stderr() and "Traceback" not in search.stderr()
    assert search.orphans(15) == [], "both worker processes stopped"

    trials = study_trials(db)
    cut_off = [t for t in trials.values() if t.state.name == "FAIL"]
    assert 1 <= len(cut_off) <= 2  # the running trials (one may have just ended on its own)
    assert all(t.state.name != "RUNNING" for t in trials.values())
    found = mlflow_runs(runs)
    assert all(r.info.status != "RUNNING" for r in found)
    assert {int(r.data.tags["nas.trial"]) for r in found if r.data.tags.get("nas.state") == "interrupted"} == \
        {t.number for t in cut_off}

    r = _nas("search", str(spec), "--runs-dir", str(runs), "--workers", "2", "--trials", "2", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout


def test_the_live_display_shows_every_running_trial() -> None:
    import io

    from rich.console import Console

    from nas.progress import RichReporter
    from nas.trial import TrialState, tally

    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=120))
    reporter.search_started(total=6, counts=tally(()), best=None, epochs=10)
    reporter.trial_started(3, 1000)
    reporter.trial_started(4, 2000)
    reporter.epoch(3, 2, {"val_accuracy": 0.5})
    reporter.epoch(4, 7, {"val_accuracy": 0.75})
    shown = "\n".join(line.plain for line in reporter._running())
    assert "trial 3 epoch 2/10 val_acc 0.5000" in shown and "trial 4 epoch 7/10 val_acc 0.7500" in shown
    reporter.trial_finished(3, TrialState.FINISHED, {"val_accuracy": 0.9}, None)
    shown = "\n".join(line.plain for line in reporter._running())
    assert "trial 3" not in shown and "trial 4 epoch 7/10" in shown
    reporter.trial_finished(4, TrialState.PRUNED, {}, "pruned at epoch 7")
    assert [line.plain for line in reporter._running()] == ["between trials"]
    reporter.close()
    assert "trial   3 \x1b[32mfinished" in out.getvalue()
