"""Failing trials never kill the search: divergence, out of memory and any other error, end to end.

Real Keras training on the bundled digits with tiny budgets. Every failure is real: SGD at learning rate 9.9 on
an unnormalized swish net drives the loss to NaN in epoch 1 (for every seed tried); out of memory is TensorFlow's
allocator refusing a 4-PB tensor inside the training step; the ValueError comes from the model builder. Tests
that patch something run the search inline, in this process; the one through the CLI uses the default worker.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

SPEC = """\
name: {name}
data: {{source: digits, validation_fraction: 0.2}}
space:
  depth: 2
  filters: 16
  batch_norm: false
  activation: swish
  head: {{type: flatten, depth: 2, width: 64}}
train:
  epochs: {epochs}
  optimizer: sgd
  learning_rate: {lr}
  batch_size: 64
search:
  sampler: random
  pruner: none
  trials: {trials}
  seed: {seed}
  max_failed_trials: {max_failed}
"""
STEPS_PER_EPOCH = 18  # 1150 training images / batch 64
DIVERGED = re.compile(r"diverged at epoch 1 \(loss (nan|inf)\); lower train\.learning_rate")
OOM = "out of memory; lower train.batch_size or space.max_params"


def write_spec(tmp_path: Path, name: str, *, lr: str = "0.01", epochs: int = 2, trials: int = 2, seed: int = 0,
               max_failed: int = 10) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, lr=lr, epochs=epochs, trials=trials, seed=seed, max_failed=max_failed))
    return path


def board(runs: Path, name: str) -> dict[int, Any]:
    df = pd.read_csv(runs / name / "leaderboard.csv", keep_default_na=False, na_values=[""])
    return {int(r["trial"]): r for _, r in df.iterrows()}


def mlflow_runs(runs: Path, name: str) -> tuple[Any, dict[int, Any]]:
    """The search's parent run and its child runs by trial number."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    found = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
    parents = [r for r in found if r.data.tags.get("nas.kind") == "search"]
    assert len(parents) == 1
    return parents[0], {int(r.data.tags["nas.trial"]): r for r in found if r.data.tags.get("nas.kind") == "trial"}


def search_inline(spec: Path, runs: Path, console: Any = None) -> Any:
    from rich.console import Console

    from nas.search import SearchOptions, run

    return run(spec, SearchOptions(runs_dir=runs, inline=True), console or Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs dir for the module (each test its own spec name): the MLflow store is created once."""
    return tmp_path_factory.mktemp("failing") / "runs"


@pytest.mark.slow
def test_a_diverging_trial_stops_at_once_and_the_search_goes_on(tmp_path: Path, runs: Path, builds: list[Any]) -> None:
    from rich.console import Console

    # seed 10 samples learning rate 9.9 for trial 0, then 0.01
    spec = write_spec(tmp_path, "mixed", lr="[9.9, 0.01]", epochs=3, trials=2, seed=10)
    out = io.StringIO()
    summary = search_inline(spec, runs, Console(file=out, force_terminal=True, color_system=None, width=200))

    # a diverged trial reached a verdict on its params: it counts toward search.trials, like a pruned one
    assert (summary.stop_reason, summary.counts["finished"], summary.counts["diverged"]) == ("budget", 1, 1)
    rows = board(runs, "mixed")
    assert sorted(rows) == [0, 1]
    assert rows[0]["state"] == "diverged" and DIVERGED.fullmatch(rows[0]["reason"]), rows[0]["reason"]
    assert rows[0]["epochs_run"] == 1  # of 3
    assert int(builds[0].optimizer.iterations) < STEPS_PER_EPOCH  # stopped inside epoch 1, at the bad batch
    assert rows[1]["state"] == "finished" and rows[1]["epochs_run"] == 3
    assert summary.best_trial == 1

    parent, children = mlflow_runs(runs, "mixed")
    assert children[0].info.status == "FAILED"
    assert children[0].data.tags["nas.state"] == "diverged" and children[0].data.tags["nas.reason"] == rows[0]["reason"]
    assert children[1].info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert re.search(r"trial +0 diverged +diverged at epoch 1 \(loss", out.getvalue())  # the rich progress line


@pytest.mark.slow
def test_every_trial_diverging_exits_2_with_the_reasons(tmp_path: Path, runs: Path) -> None:
    """Through the CLI and the default worker process: the search ends, says why, and no traceback shows."""
    spec = write_spec(tmp_path, "alldiv", lr="9.9", epochs=3, trials=2)
    r = subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(runs)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    err = " ".join(r.stderr.split())
    assert ("no trial finished, so there is no best model (search complete: 0 finished, 0 pruned, 2 diverged, "
            "0 failed)") in err
    assert re.search(r"Most common reasons: 2 x diverged at epoch 1 \(loss (nan|inf)\); lower train\.learning_rate",
                     err), err

    rows = board(runs, "alldiv")
    assert sorted(rows) == [0, 1]
    assert all(r["state"] == "diverged" and DIVERGED.fullmatch(r["reason"]) and r["epochs_run"] == 1
               for r in rows.values())
    parent, children = mlflow_runs(runs, "alldiv")
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children.values()] == ["FAILED", "FAILED"]
    assert all(DIVERGED.fullmatch(c.data.tags["nas.reason"]) for c in children.values())


@pytest.mark.slow
def test_out_of_memory_fails_one_trial_and_the_next_runs(tmp_path: Path, runs: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    import nas.train

    real, pending = nas.train.build_model, [STEPS_PER_EPOCH + 3]  # one out-of-memory error, in epoch 2

    def build(arch: Any) -> Any:
        """The first trial's training step raises TensorFlow's OOM error from step `at` on, where fit() would
        see it. (A real one, TensorFlow's allocator refusing a 4-PB tensor, behaves the same but takes 10 s:
        the allocator waits that long for memory to be freed before it gives up.)"""
        model = real(arch)
        if pending:
            at, make = pending.pop(), model.make_train_function

            def make_train_function(force: bool = False) -> Any:
                make(force)
                step, calls = model.train_function, [0]

                def train_function(iterator: Any) -> Any:
                    calls[0] += 1
                    if calls[0] >= at:
                        raise tf.errors.ResourceExhaustedError(
                            None, None, "OOM when allocating tensor with shape[64,16,8,8] and type float on "
                            "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc")
                    return step(iterator)

                model.train_function = train_function
                return train_function

            model.make_train_function = make_train_function
        return model

    monkeypatch.setattr(nas.train, "build_model", build)
    spec = write_spec(tmp_path, "oom", epochs=2, trials=1)
    summary = search_inline(spec, runs)

    # an error does not count toward search.trials: trial 1 replaces trial 0
    assert (summary.stop_reason, summary.counts["finished"], summary.counts["failed"]) == ("budget", 1, 1)
    rows = board(runs, "oom")
    assert rows[0]["state"] == "failed" and rows[0]["reason"] == OOM
    assert rows[0]["epochs_run"] == 1  # epoch 1 ran; epoch 2 hit the error
    assert rows[1]["state"] == "finished" and rows[1]["epochs_run"] == 2
    _, children = mlflow_runs(runs, "oom")
    assert children[0].info.status == "FAILED" and children[0].data.tags["nas.reason"] == OOM
    assert "ResourceExhaustedError" in children[0].data.tags["nas.traceback"]
    assert "OOM when allocating tensor" in children[0].data.tags["nas.traceback"]
    assert children[1].info.status == "FINISHED"


@pytest.mark.slow
def test_errors_stop_the_search_at_max_failed_trials_and_keep_finished_trials(
        tmp_path: Path, runs: Path, builds: list[Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import nas.train
    from nas.cli import main

    counting = nas.train.build_model

    def build(arch: Any) -> Any:
        if builds:  # the first trial builds; every later one fails
            raise ValueError("Kernel shape must have the same length as input, but received kernel of shape (3, 3)\n"
                             "and input of shape (None, 8, 8).")
        return counting(arch)

    monkeypatch.setattr(nas.train, "build_model", build)
    spec = write_spec(tmp_path, "errors", epochs=1, trials=5, max_failed=2)
    with pytest.raises(SystemExit) as exit_:
        main(["search", str(spec), "--runs-dir", str(runs), "--inline"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "Traceback" not in out + err
    reason = "ValueError: Kernel shape must have the same length as input, but received kernel of shape (3, 3)"
    err = " ".join(err.split())
    assert ("the search stopped after 2 failed trials (search.max_failed_trials) (1 finished, 0 pruned, 2 failed); "
            "the finished trials and best/ are kept. Most common reasons: 2 x " + reason) in err, err
    assert "rerun the same command to resume" in err

    rows = board(runs, "errors")
    assert sorted(rows) == [0, 1, 2]  # stopped: trials 3 and 4 never started
    assert rows[0]["state"] == "finished"
    assert all(rows[n]["state"] == "failed" and rows[n]["reason"] == reason for n in (1, 2))
    assert (runs / "errors" / "best" / "model.keras").exists()
    assert '"trial": 0' in (runs / "errors" / "best" / "metrics.json").read_text()

    parent, children = mlflow_runs(runs, "errors")
    assert parent.info.status == "FAILED"  # the search did not do what was asked
    assert children[0].info.status == "FINISHED"
    for n in (1, 2):
        tags = children[n].data.tags
        assert children[n].info.status == "FAILED" and tags["nas.state"] == "failed" and tags["nas.reason"] == reason
        assert tags["nas.traceback"].startswith("Traceback (most recent call last)")
        assert "and input of shape (None, 8, 8)." in tags["nas.traceback"]


@pytest.mark.slow
def test_an_error_in_the_worker_fails_one_trial_and_a_fresh_worker_runs_the_next(tmp_path: Path) -> None:
    import dataclasses

    from nas.data import load_source, make_splits
    from nas.space import DataInfo, SearchSpace
    from nas.spec import parse_spec
    from nas.trial import TrialTask
    from nas.worker import ProcessRunner

    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
    good = SearchSpace(parse_spec(write_spec(tmp_path, "w", epochs=1).read_text())).decode({}, info)
    bad = dataclasses.replace(good, arch=dataclasses.replace(good.arch, activation="no_such_activation"))
    runner = ProcessRunner(splits, log_path=str(tmp_path / "worker.log"))
    try:
        failed = runner.run(TrialTask(0, bad, seed=0, epochs=1), lambda e, m: "continue")
        pid = runner._proc.pid
        assert failed.state == "failed"
        assert failed.reason.startswith("ValueError: ") and "no_such_activation" in failed.reason
        assert "Traceback (most recent call last)" in failed.traceback
        ok = runner.run(TrialTask(1, good, seed=1, epochs=1), lambda e, m: "continue")
        assert runner._proc.pid != pid  # an error may leave TensorFlow broken: the worker was replaced
        assert ok.state == "finished" and ok.metrics["epochs_run"] == 1
    finally:
        runner.close()


def test_an_error_of_our_own_ends_the_search_and_the_trial_run_says_why(tmp_path: Path) -> None:
    """Not a trial's failure (the tracking store, the run dir): it propagates, and the trial's MLflow run ends
    failed with the reason, not as "interrupted by the user", which only Ctrl-C gets."""
    from nas.objective import TrialObjective
    from nas.progress import PlainReporter
    from nas.rundir import RunDir
    from nas.space import DataInfo, SearchSpace
    from nas.spec import parse_spec

    class Tracker:
        def __init__(self) -> None:
            self.ended: list[tuple[str, str | None, dict[str, str]]] = []

        def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> str:
            return f"run-{number}"

        def end_trial(self, run_id: str, *, state: str, reason: str | None, metrics: dict[str, float],
                      tags: dict[str, str]) -> None:
            self.ended.append((state, reason, tags))

    class Runner:
        device, framework = "CPU", "tensorflow"

        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def run(self, task: Any, on_epoch: Any) -> Any:
            raise self.exc

    spec = parse_spec(write_spec(tmp_path, "own").read_text())
    for exc, state, reason in [(OSError(28, "No space left on device"), "failed",
                                "OSError: [Errno 28] No space left on device"),
                               (KeyboardInterrupt(), "interrupted", "interrupted by the user")]:
        tracker = Tracker()
        objective = TrialObjective(space=SearchSpace(spec), data=DataInfo((8, 8, 1), 10, 16.0), runner=Runner(exc),
                                   tracker=tracker, reporter=PlainReporter(io.StringIO()), run=RunDir(tmp_path),
                                   objectives=spec.search.objectives, seed=0)  # type: ignore[arg-type]
        with pytest.raises(type(exc)):
            objective(0, {}, epochs=1)
        assert [(s, r) for s, r, _ in tracker.ended] == [(state, reason)]
        assert ("nas.traceback" in tracker.ended[0][2]) == (state == "failed")


def test_failure_reasons_are_one_line_and_tracebacks_fit_an_mlflow_tag() -> None:
    import tensorflow as tf

    from nas.train import describe_failure

    def reason(exc: BaseException) -> str:
        return describe_failure(exc)[0]

    assert reason(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")) == OOM
    assert reason(MemoryError()) == OOM
    assert reason(tf.errors.InternalError(None, None, "CUDA_ERROR_OUT_OF_MEMORY: out of memory")) == OOM
    assert reason(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert reason(KeyError("x" * 500)) == "KeyError: '" + "x" * 299
    assert reason(RuntimeError()) == "RuntimeError"

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise tf.errors.ResourceExhaustedError(None, None, "Graph execution error:\n" + "  File x.py\n" * 2000
                                               + "OOM when allocating tensor with shape[1125899906842624]")

    try:
        deep(50)
    except tf.errors.ResourceExhaustedError as exc:
        tb = describe_failure(exc)[1]
    assert len(tb) < 8000 and tb.startswith("Traceback (most recent call last):\n")  # MLflow's tag limit
    assert "in deep" in tb and "in test_failure_reasons" not in tb  # the innermost frames only
    assert "ResourceExhaustedError: Graph execution error:" in tb
    assert tb.rstrip().endswith("OOM when allocating tensor with shape[1125899906842624]")


def test_max_failed_trials_has_a_sensible_documented_default() -> None:
    from nas.spec import parse_spec

    spec = parse_spec("name: d\ndata: {source: digits}\nspace: {depth: 1}\n")
    assert spec.search.max_failed_trials == 10 and spec.search.trials == 20
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "`search.max_failed_trials` (default 10)" in readme
