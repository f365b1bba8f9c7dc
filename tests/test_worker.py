"""Where trials run: a worker process that dies fails one trial, not the search; workers are recycled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from nas.data import load_source, make_splits
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
import re
from types import SimpleNamespace

from nas.trial import TrialTask
from nas.worker import InlineRunner, ProcessRunner

pytestmark = pytest.mark.slow

SPEC = "name: w\ndata: {source: digits}\nspace: {depth: 1, filters: 8, head: {depth: 0}}\ntrain: {epochs: 2}\n"


@pytest.fixture(scope="module")
def setup():
    spec = parse_spec(SPEC)
    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
    return SearchSpace(spec).decode({}, info), splits


def test_a_killed_worker_fails_one_trial_and_the_next_runs(setup, tmp_path: Path) -> None:
    candidate, splits = setup
    runner = ProcessRunner(splits, max_tasks=10, log_path=str(tmp_path / "w.log"))
    try:
        def kill(epoch: int, metrics: dict[str, float]) -> str:
            os.kill(runner._proc.pid, signal.SIGKILL)
            return "continue"

        out = runner.run(TrialTask(0, candidate, seed=0, epochs=2), kill)
        assert out.state == "failed"
        assert out.reason == "the trial's worker process was killed by SIGKILL (the system may have run out of memory)"
        ok = runner.run(TrialTask(1, candidate, seed=1, epochs=2), lambda e, m: "continue")
        assert ok.state == "finished" and ok.metrics["epochs_run"] == 2 and 0 < ok.metrics["val_accuracy"] <= 1
    finally:
        runner.close()


def test_workers_are_recycled_and_prune_decisions_reach_them(setup, tmp_path: Path) -> None:
    candidate, splits = setup
    runner = ProcessRunner(splits, max_tasks=1)
    try:
        first = runner.run(TrialTask(0, candidate, seed=0, epochs=2, save_model_to=str(tmp_path / "m.keras")),
                           lambda e, m: "continue")
        pid = runner._proc.pid
        pruned = runner.run(TrialTask(1, candidate, seed=0, epochs=2), lambda e, m: "prune")
        assert runner._proc.pid != pid  # a fresh process after max_tasks trials
        assert first.state == "finished" and Path(first.model_path).exists()
        assert pruned.state == "pruned" and pruned.metrics["epochs_run"] == 1 and pruned.model_path is None
        assert pruned.reason.startswith("pruned at epoch 1")
        measured = runner.evaluate(str(tmp_path / "m.keras"), ("test",))
        assert 0 < measured["test_accuracy"] <= 1 and measured["test_samples"] == len(splits.test.y)
    finally:
        runner.close()


def test_same_seed_gives_the_same_metrics_in_a_fresh_worker_and_a_used_one(setup) -> None:
    """A worker clears the session a trial leaves (after sending its result): the next trial trains as in a fresh
    worker."""
    candidate, splits = setup
    results = []
    for earlier in ((), (3,)):
        runner = ProcessRunner(splits)
        try:
            for seed in earlier:
                runner.run(TrialTask(0, candidate, seed=seed, epochs=1), lambda e, m: "continue")
            results.append(runner.run(TrialTask(1, candidate, seed=5, epochs=2), lambda e, m: "continue").history)
        finally:
            runner.close()
    assert results[0] == results[1]


TIMEOUT = re.compile(r"ran past search\.trial_timeout \(3s\) after \d+ epoch\(s\); raise it or shrink the space")


def test_a_trial_past_its_timeout_fails_and_its_worker_is_replaced(setup, tmp_path: Path) -> None:
    candidate, splits = setup
    runner = ProcessRunner(splits, trial_timeout=3.0, log_path=str(tmp_path / "w.log"))
    try:
        out = runner.run(TrialTask(0, candidate, seed=0, epochs=500), lambda e, m: "continue")
        pid = None if runner._proc is None else runner._proc.pid
        assert out.state == "failed" and TIMEOUT.fullmatch(out.reason), out.reason
        # stopped at the limit (the clock starts once the worker is up), not at the end of its 500 epochs
        assert 3.0 <= out.metrics["wall_time_s"] < 10, out.metrics
        assert 0 < out.metrics["epochs_run"] < 500 and len(out.history) == out.metrics["epochs_run"]
        assert pid is None  # killed mid-trial: a new worker trains the next trial
        runner.trial_timeout = None
        ok = runner.run(TrialTask(1, candidate, seed=1, epochs=1), lambda e, m: "continue")
        assert ok.state == "finished"
    finally:
        runner.close()


def test_an_inline_trial_past_its_timeout_stops_itself(setup) -> None:
    candidate, splits = setup
    out = InlineRunner(splits, trial_timeout=3.0).run(TrialTask(0, candidate, seed=0, epochs=500),
                                                      lambda e, m: "continue")
    assert out.state == "failed" and TIMEOUT.fullmatch(out.reason), out.reason
    assert 0 < out.metrics["epochs_run"] < 500


def test_a_worker_that_cannot_start_fails_the_trial_with_a_reason(setup, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    candidate, splits = setup
    slow = ProcessRunner(splits, start_timeout=0.05, log_path=str(tmp_path / "w.log"))
    out = slow.run(TrialTask(0, candidate, seed=0, epochs=1), lambda e, m: "continue")
    assert out.state == "failed"
    assert out.reason == f"the trial worker process did not start within 0s; see {tmp_path / 'w.log'}"
    assert slow._proc is None  # the half-started worker is not left behind

    refused = ProcessRunner(splits)

    def no_fork(*args: object, **kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(refused._ctx, "Process", no_fork)
    out = refused.run(TrialTask(0, candidate, seed=0, epochs=1), lambda e, m: "continue")
    assert out.state == "failed"
    assert out.reason == ("could not start a trial worker process (BlockingIOError: [Errno 11] Resource temporarily "
                          "unavailable)")


def test_the_spec_sets_the_trial_timeout_of_either_runner(setup, tmp_path: Path) -> None:
    from nas.search import SearchOptions, _make_runners

    _, splits = setup
    spec = parse_spec(SPEC + "search: {trial_timeout: 20m, worker_max_trials: 3}\n")
    s = SimpleNamespace(spec=spec, splits=splits, run_dir=SimpleNamespace(root=tmp_path), opts=SearchOptions(),
                        gpus=None)
    [runner] = _make_runners(s)
    assert isinstance(runner, ProcessRunner) and runner.trial_timeout == 1200 and runner.max_tasks == 3
    [inline] = _make_runners(SimpleNamespace(**{**vars(s), "opts": SearchOptions(inline=True)}))
    assert isinstance(inline, InlineRunner) and inline.trial_timeout == 1200
