"""What only the KerasTuner backend has: the HyperParameters translation, Hyperband's schedule, the guard
against KerasTuner's silent reload, its error taxonomy mapped onto ours, and one real search through the CLI."""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras_tuner as kt
import pytest

from nas.backends.keras_tuner_backend import KerasTunerBackend, hyperband_plan, hyperparameters
from nas.errors import NasError, TrackingError
from nas.trial import TrialResult
from nas.rundir import RunDir
from nas.space import SearchSpace
from nas.spec import parse_spec

SPEC = """name: t
data: {source: digits}
space:
  depth: {low: 1, high: 3}
  filters: [8, 16]
  kernel_size: [3, 5]
  pooling: [max, none]
  batch_norm: [true, false]
  convs_per_block: {low: 1, high: 3, step: 2}
  dropout: {low: 0.0, high: 0.4, step: 0.1}
  head: {depth: 1, width: {low: 16, high: 64, log: true}}
  per_block: false
train:
  epochs: 4
  learning_rate: {low: 1e-4, high: 1e-1, log: true}
search:
  backend: keras-tuner
"""


class Scripted:
    """Stands in for TrialObjective (no training): the score depends on the learning rate."""

    def out_of_time(self) -> bool:  # no search.budget here
        return False

    def __init__(self, result: Any = None, sleep: float = 0.0):
        self.calls: list[tuple[int, dict[str, Any], int, dict[str, str]]] = []
        self.checkpoints: list[bool] = []  # whether each trial was asked to leave a checkpoint
        self.result, self.sleep = result, sleep

    def checkpoint_path(self, number: int) -> Path:
        return Path(f"/nonexistent/trial-{number}.npz")

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, initial_epoch: int = 0,
                 should_prune: Any = None, tags: Any = None, checkpoint: bool = False,
                 resume_of: int | None = None) -> TrialResult:
        self.calls.append((number, params, epochs, tags))
        self.checkpoints.append(checkpoint)
        time.sleep(self.sleep)
        if self.result is not None:
            return self.result(number) if callable(self.result) else self.result
        score = 1 - abs(math.log10(params["train.learning_rate"]) + 2.5) / 3
        return TrialResult("finished", None, {"val_accuracy": score, "epochs_run": float(epochs)})


def backend(tmp_path: Path, search: str = "", spec_hash: str = "h1", spec: str = SPEC) -> KerasTunerBackend:
    parsed = parse_spec(spec + search)
    (tmp_path / "t").mkdir(exist_ok=True)
    return KerasTunerBackend.open(parsed, SearchSpace(parsed), RunDir(tmp_path / "t"), spec_hash)


def test_every_dimension_kind_becomes_its_hyperparameter() -> None:
    spec = parse_spec(SPEC)
    hp = hyperparameters(SearchSpace(spec))
    by_name = {p.name: p for p in hp.space}
    assert list(by_name) == list(SearchSpace(spec).dims)  # same names, same order
    assert isinstance(by_name["filters"], kt.engine.hyperparameters.Choice) and by_name["filters"].values == [8, 16]
    assert by_name["pooling"].values == ["max", "none"]
    assert isinstance(by_name["batch_norm"], kt.engine.hyperparameters.Boolean)  # not Choice's 1/0
    depth = by_name["depth"].get_config()
    assert (depth["min_value"], depth["max_value"], depth["step"], depth["sampling"]) == (1, 3, 1, "linear")
    assert by_name["convs_per_block"].get_config()["step"] == 2
    width = by_name["head.width"].get_config()
    assert (width["min_value"], width["max_value"], width["step"], width["sampling"]) == (16, 64, None, "log")
    dropout = by_name["dropout"].get_config()
    assert (dropout["min_value"], dropout["max_value"], dropout["step"], dropout["sampling"]) == (0.0, 0.4, 0.1, "linear")
    lr = by_name["train.learning_rate"].get_config()
    assert (lr["min_value"], lr["max_value"], lr["step"], lr["sampling"]) == (1e-4, 1e-1, None, "log")


@pytest.mark.parametrize("max_epochs,factor", [(9, 3), (2, 2), (10, 3)])
def test_hyperband_runs_the_planned_schedule(tmp_path: Path, max_epochs: int, factor: int) -> None:
    b = backend(tmp_path, f"  hyperband: {{max_epochs: {max_epochs}, factor: {factor}}}\n")
    objective = Scripted()
    assert b.run(objective, lambda: None) == "budget"  # type: ignore[arg-type]
    ran = collections.Counter((int(t["keras_tuner.bracket"]), int(t["keras_tuner.round"]), e)
                              for _, _, e, t in objective.calls)
    assert ran == {(br, r, e): n for br, r, n, e in hyperband_plan(max_epochs, factor)}
    assert b.total == len(objective.calls) == b.done()
    assert max(e for _, _, e, _ in objective.calls) == max_epochs
    # every trial that a later round may promote leaves a checkpoint to continue from; full-length ones need none
    assert objective.checkpoints == [e < max_epochs for _, _, e, _ in objective.calls]
    promoted = [t for _, _, _, t in objective.calls if "keras_tuner.promoted_from" in t]
    assert promoted and all(int(t["keras_tuner.round"]) > 0 for t in promoted)
    # a promoted config keeps its params and reports where KerasTuner would continue from
    first = {n: p for n, p, _, _ in objective.calls}
    for number, params, _, tags in objective.calls:
        if "keras_tuner.promoted_from" in tags:
            assert params == first[int(tags["keras_tuner.promoted_from"])]
            assert int(tags["keras_tuner.initial_epoch"]) > 0


def test_train_epochs_is_the_hyperband_default(tmp_path: Path) -> None:
    b = backend(tmp_path)
    assert b.epochs == 4 and b.describe() == {"algorithm": "hyperband", "max_epochs": 4, "factor": 3}


def test_a_project_of_another_spec_is_never_reloaded(tmp_path: Path) -> None:
    b = backend(tmp_path, "  algorithm: random\n  trials: 2\n")
    b.run(Scripted(), lambda: None)  # type: ignore[arg-type]
    with pytest.raises(NasError, match=r"keras_tuner: this KerasTuner project was made by a different spec; "
                                       r"KerasTuner would silently reload it.*--new"):
        backend(tmp_path, "  algorithm: random\n  trials: 2\n", spec_hash="h2")
    other = SPEC.replace("filters: [8, 16]", "filters: [8, 32]")
    with pytest.raises(NasError, match=r"the reloaded KerasTuner search space differs from the spec's"):
        backend(tmp_path, "  algorithm: random\n  trials: 2\n", spec=other)  # same marker, different space
    (tmp_path / "t" / "keras_tuner" / "nas.json").unlink()
    with pytest.raises(NasError, match=r"made without a nas marker"):
        backend(tmp_path, "  algorithm: random\n  trials: 2\n")


def test_unreadable_project_is_a_clear_error(tmp_path: Path) -> None:
    b = backend(tmp_path, "  algorithm: random\n  trials: 2\n")
    b.run(Scripted(), lambda: None)  # type: ignore[arg-type]
    (tmp_path / "t" / "keras_tuner" / "oracle.json").write_text("{truncated")
    with pytest.raises(NasError, match=r"the KerasTuner project cannot be reloaded \(JSONDecodeError.*rerun with --new"):
        backend(tmp_path, "  algorithm: random\n  trials: 2\n")


def test_errors_count_toward_the_limit_and_divergence_does_not(tmp_path: Path) -> None:
    boom = TrialResult("failed", "ValueError: boom")
    b = backend(tmp_path, "  algorithm: random\n  trials: 6\n  max_failed_trials: 2\n")
    assert b.run(Scripted(result=boom), lambda: None) == "failures"  # type: ignore[arg-type]
    assert (b.counts()["finished"], b.counts()["failed"]) == (0, 2) and [r["reason"] for r in b.rows()] == ["ValueError: boom"] * 2

    (tmp_path / "d").mkdir()
    diverged = TrialResult("diverged", "diverged at epoch 1 (loss nan)")
    flaky = Scripted(result=lambda n: diverged if n < 3 else TrialResult("finished", None, {"val_accuracy": 0.5}))
    b = backend(tmp_path / "d", "  algorithm: random\n  trials: 4\n  max_failed_trials: 2\n")
    assert b.run(flaky, lambda: None) == "budget"  # type: ignore[arg-type]
    assert (b.counts()["finished"], b.counts()["diverged"], b.counts()["failed"]) == (1, 3, 0)  # a verdict on its params, like pruning: it counts toward the budget


def test_unexpected_errors_stop_the_search_and_the_trial_is_rerun(tmp_path: Path) -> None:
    def broken(number: int) -> TrialResult:
        raise TrackingError("MLflow tracking at 'x': could not start trial 1")

    b = backend(tmp_path, "  algorithm: random\n  trials: 3\n")
    with pytest.raises(TrackingError, match="could not start trial 1"):  # not swallowed as a failed trial
        b.run(Scripted(result=broken), lambda: None)  # type: ignore[arg-type]
    again = backend(tmp_path, "  algorithm: random\n  trials: 3\n")
    objective = Scripted()
    again.run(objective, lambda: None)  # type: ignore[arg-type]
    assert [n for n, *_ in objective.calls] == [0, 1, 2] and again.counts()["finished"] == 3


def test_timeout_stops_starting_trials(tmp_path: Path) -> None:
    b = backend(tmp_path, "  algorithm: random\n  trials: 50\n  timeout: 0.3s\n")
    objective = Scripted(sleep=0.2)
    assert b.run(objective, lambda: None) == "timeout"  # type: ignore[arg-type]
    assert 1 <= len(objective.calls) <= 3


def test_storage_flag_is_refused_for_keras_tuner(tmp_path: Path) -> None:
    from rich.console import Console

    from nas.search import SearchOptions, run

    spec = tmp_path / "t.yaml"
    spec.write_text(SPEC + "tracking: {enabled: false}\n")
    with pytest.raises(NasError, match=r"--storage is for the optuna backend.*keeps its state in .*keras_tuner/; drop --storage"):
        run(spec, SearchOptions(runs_dir=tmp_path / "runs", storage="sqlite:///x.db"), Console(quiet=True))
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.slow
def test_cli_search_on_digits_with_hyperband(tmp_path: Path) -> None:
    """The real thing: `nas search` with keras-tuner Hyperband trains, tracks, ranks, survives Ctrl-C, resumes
    and refuses a changed spec."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    spec = tmp_path / "kt.yaml"
    spec.write_text("""name: kt
data: {source: digits, validation_fraction: 0.2}
space:
  depth: {low: 1, high: 2}
  filters: [8, 16]
  pooling: [max, none]
  head: {type: gap, depth: 0}
train:
  epochs: 2
  learning_rate: {low: 3e-3, high: 1e-2, log: true}
  batch_size: 16             # enough steps for 1-2 epochs to learn digits
search:
  backend: keras-tuner
  algorithm: hyperband
  hyperband: {max_epochs: 2, factor: 2}
  seed: 0
""")
    runs = tmp_path / "runs"
    env = {**os.environ, "COLUMNS": "200"}

    def nas(*args: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nas", *map(str, args)], capture_output=True, text=True,
                              timeout=600, env=env)

    board = runs / "kt" / "leaderboard.csv"
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not board.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert board.exists(), "no trial finished in time"
    time.sleep(1.0)  # into the next trial
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: nas search" in err and "Traceback" not in err
    before = pd.read_csv(board)
    kept = before[before["state"] == "finished"]
    assert 1 <= len(kept) < 5

    r = nas("search", spec, "--runs-dir", runs)  # resumes the KerasTuner project
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr and "Reloading" not in r.stdout
    assert "resuming" in r.stdout and f"{len(kept)} of 5 trials already done" in " ".join(r.stdout.split())
    df = pd.read_csv(board)
    for _, row in kept.iterrows():  # the trials finished before Ctrl-C are kept, not re-run
        assert df[df["trial"] == row["trial"]].iloc[0]["val_accuracy"] == row["val_accuracy"]
    assert len(df) == 5 and set(df["state"]) == {"finished"}  # hyperband 2/2: 2 x 1 epoch, 1 x 2, then 2 x 2
    # the promoted config continues its parent's checkpoint: it trains epoch 2 only (KerasTuner's initial_epoch)
    assert sorted(df["epochs_run"]) == [1, 1, 1, 2, 2]
    metrics = json.loads((runs / "kt" / "best" / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and metrics["trial"] == int(df.iloc[0]["trial"])
    assert (runs / "kt" / "keras_tuner" / "oracle.json").exists()

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("kt")
    all_runs = client.search_runs([exp.experiment_id])
    parent = [x for x in all_runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in all_runs if "mlflow.parentRunId" in x.data.tags]
    assert len(parent) == 1 and parent[0].data.params["algorithm"] == "hyperband"
    finished = [c for c in children if c.data.tags["nas.state"] == "finished"]
    assert len(finished) == 5 and all(c.data.tags["nas.backend"] == "keras-tuner" for c in children)
    assert all(c.info.status != "RUNNING" for c in children)  # the interrupted trial's run was closed
    assert {"keras_tuner.trial_id", "keras_tuner.bracket", "keras_tuner.round"} <= set(finished[0].data.tags)
    assert sorted(c.data.tags["keras_tuner.trial_id"] for c in finished) == [f"{i:04d}" for i in range(5)]
    (promoted,) = [c for c in finished if "nas.resume_of" in c.data.tags]
    assert promoted.data.tags["nas.resume_of"] == str(int(promoted.data.tags["keras_tuner.promoted_from"]))
    assert [m.step for m in client.get_metric_history(promoted.info.run_id, "val_accuracy")] == [1, 2]

    r = nas("search", spec, "--runs-dir", runs)  # the same command again: resumes, nothing left to do
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "5 of 5 trials already done" in r.stdout
    assert len(pd.read_csv(runs / "kt" / "leaderboard.csv")) == 5

    spec.write_text(spec.read_text().replace("factor: 2", "factor: 3"))
    r = nas("search", spec, "--runs-dir", runs)
    assert r.returncode == 2 and "created by a different spec (changed: search.hyperband.factor)" in r.stderr
    assert "Traceback" not in r.stderr
