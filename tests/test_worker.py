"""Where trials run: a worker process that dies fails one trial, not the search; workers are recycled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from nas.data import load_source, make_splits
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.trial import TrialTask
from nas.worker import ProcessRunner

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
        assert ok.state == "finished" and ok.epochs_run == 2 and 0 < ok.best["val_accuracy"] <= 1
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
        assert pruned.state == "pruned" and pruned.epochs_run == 1 and pruned.model_path is None
        assert pruned.reason.startswith("pruned at epoch 1")
        measured = runner.evaluate(str(tmp_path / "m.keras"), ("test",))
        assert 0 < measured["test_accuracy"] <= 1 and measured["test_samples"] == len(splits.test.y)
    finally:
        runner.close()


def test_same_seed_gives_the_same_metrics_in_a_fresh_worker(setup) -> None:
    candidate, splits = setup
    results = []
    for _ in range(2):
        runner = ProcessRunner(splits)
        try:
            results.append(runner.run(TrialTask(0, candidate, seed=5, epochs=2), lambda e, m: "continue").history)
        finally:
            runner.close()
    assert results[0] == results[1]
