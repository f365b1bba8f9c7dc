"""Cheap early rungs: epochs before a pruning rung train on a class-stratified share of the training data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nas.budget import describe_stages, rung_stages
from nas.data.splits import Split, subset


def test_stages_follow_the_pruners_rungs() -> None:
    assert rung_stages("successive_halving", 1, 12, 51_000) == ((3, 1 / 9), (9, 1 / 3), (12, 1.0))
    assert rung_stages("hyperband", 1, 12, 51_000) == ((3, 1 / 9), (9, 1 / 3), (12, 1.0))
    assert rung_stages("median", 1, 12, 51_000) == ((1, 1 / 3), (12, 1.0))
    assert rung_stages("none", 1, 12, 51_000) == ()  # no rung, nothing to make cheap
    # small data: a subset must hold MIN_SUBSET images, and one that saves less than half is no cheap rung
    assert rung_stages("successive_halving", 1, 12, 5_000) == ((3, 0.2), (9, 1 / 3), (12, 1.0))
    assert rung_stages("successive_halving", 1, 12, 1_150) == ()
    assert describe_stages(rung_stages("median", 1, 12, 51_000)) == "epoch 1 on 1/3, epochs 2-12 on all"


@pytest.mark.parametrize("rung_data,budget,cheap", [(None, "30m", False), ("full", "30m", False),
                                                     ("auto", "30m", True), ("auto", None, False),
                                                     ("subsets", None, True)])
def test_rung_data_picks_when_early_rungs_train_on_subsets(rung_data: str | None, budget: str | None,
                                                           cheap: bool) -> None:
    """The default is every epoch on all the data (measured better under a 30-minute budget, bench/RESULTS.md);
    subsets are an opt-in, always or (auto) under a budget."""
    from nas.budget import early_rungs
    from nas.spec import parse_spec

    keys = {"pruner": "successive_halving", **({"rung_data": rung_data} if rung_data else {}),
            **({"budget": budget} if budget else {})}
    spec = parse_spec("name: r\ndata: {source: digits}\nspace: {depth: 1, filters: [4]}\ntrain: {epochs: 12}\n"
                      f"search: {keys}\n".replace("'", ""))
    stages = early_rungs(spec, 51_000)
    assert stages == (((3, 1 / 9), (9, 1 / 3), (12, 1.0)) if cheap else ()), stages


def test_a_subset_is_stratified_nested_and_the_same_for_every_trial() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), [900, 100, 50, 300, 300, 300, 300, 300, 300, 9])
    split = Split(rng.integers(0, 255, (len(y), 4, 4, 1)).astype(np.uint8), rng.permutation(y))
    ninth, third = subset(split, 1 / 9), subset(split, 1 / 3)
    counts = np.bincount(split.y)
    assert np.array_equal(np.bincount(ninth.y, minlength=10), np.maximum(1, np.round(counts / 9)).astype(int))
    assert np.array_equal(np.bincount(third.y, minlength=10), np.maximum(1, np.round(counts / 3)).astype(int))
    rows = {r.tobytes() for r in split.x.reshape(len(y), -1)}
    assert {r.tobytes() for r in ninth.x.reshape(len(ninth.y), -1)} <= rows
    as_set = lambda s: {(r.tobytes(), int(c)) for r, c in zip(s.x.reshape(len(s.y), -1), s.y)}  # noqa: E731
    assert as_set(ninth) <= as_set(third)  # nested: promotion adds images, never swaps them
    again = subset(split, 1 / 9)
    assert np.array_equal(again.x, ninth.x) and np.array_equal(again.y, ninth.y)  # the same images for every trial
    assert subset(split, 1.0) is split


@pytest.mark.slow
def test_a_trial_trains_each_span_on_its_share_and_one_schedule_over_all(builds: list[Any]) -> None:
    import keras

    import nas.train
    from nas.data import load_source, make_splits
    from nas.space import DataInfo, SearchSpace
    from nas.spec import parse_spec
    from nas.trial import TrialTask

    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0).without_test()
    spec = parse_spec("name: r\ndata: {source: digits}\nspace: {depth: 1, filters: 8, head: {depth: 0}}\n"
                      "train: {epochs: 4, batch_size: 32, schedule: cosine}\n")
    candidate = SearchSpace(spec).decode({}, DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max))
    stages = ((1, 1 / 9), (3, 1 / 3), (4, 1.0))
    seen: list[int] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> str:
        seen.append(int(builds[-1].optimizer.iterations))
        return "continue"

    out = nas.train.run_trial(TrialTask(0, candidate, seed=0, epochs=4, stages=stages), splits, on_epoch)
    assert out.state == "finished" and out.metrics["epochs_run"] == 4
    steps = [math.ceil(len(subset(splits.train, share).y) / 32) for share in (1 / 9, 1 / 3, 1 / 3, 1.0)]
    assert seen == list(np.cumsum(steps)), (seen, steps)  # epoch 1 on 1/9, epochs 2-3 on 1/3, epoch 4 on all
    # one schedule over the planned steps of every span: the cosine ends at ~0 exactly at the last step
    lr = builds[-1].optimizer.learning_rate
    assert float(lr) < 1e-3 * candidate.train.learning_rate

    pruned = nas.train.run_trial(TrialTask(1, candidate, seed=0, epochs=4, stages=stages), splits,
                                 lambda e, m: "prune")
    assert pruned.state == "pruned" and pruned.metrics["epochs_run"] == 1  # pruned in the first span: no more spans

    # the endgame's finalist trains past the stages' last epoch (train.epochs): on all the data
    seen.clear()
    longer = nas.train.run_trial(TrialTask(2, candidate, seed=0, epochs=6, stages=stages), splits, on_epoch)
    assert longer.state == "finished" and longer.metrics["epochs_run"] == 6
    assert seen == list(np.cumsum(steps + steps[-1:] * 2)), seen

    # ... and its plain constant learning rate decays after its pause (decay_from), by a cosine to ~0 at the end
    flat = parse_spec("name: r\ndata: {source: digits}\nspace: {depth: 1, filters: 8, head: {depth: 0}}\n"
                      "train: {epochs: 4, batch_size: 32, learning_rate: 0.01}\n")
    constant = SearchSpace(flat).decode({}, DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max))
    rates: list[float] = []

    def rate(epoch: int, metrics: dict[str, float]) -> str:
        rates.append(float(keras.ops.convert_to_numpy(builds[-1].optimizer.learning_rate)))
        return "continue"

    nas.train.run_trial(TrialTask(3, constant, seed=0, epochs=6, decay_from=3), splits, rate)
    cosine = [0.5 * (1 + math.cos(math.pi * (k - 0.5) / 3)) for k in (1, 2, 3)]  # 0.93, 0.5, 0.07
    assert rates == pytest.approx([0.01] * 3 + [0.01 * c for c in cosine], rel=1e-5), rates


ASHA_SPEC = """\
name: asha
data: {source: digits, validation_fraction: 0.2}
augment: {translation: 0.05}
space: {depth: 1, filters: [4, 8], dropout: {low: 0.0, high: 0.3}, head: {depth: 0}}
train: {epochs: 3, batch_size: 64, learning_rate: {low: 1e-3, high: 3e-2, log: true}}
search: {pruner: asha, trials: 6, seed: 1, startup_trials: 3}
tracking: {enabled: true}
"""


@pytest.mark.slow
def test_asha_through_the_real_search_pauses_checkpoints_and_continues_trials(tmp_path: Path) -> None:
    """The whole path in worker processes: a paused trial leaves a checkpoint, the continuation trains only the
    epochs after the pause, its MLflow run shows the whole curve, and the used checkpoint is cleaned up."""
    import io

    import pandas as pd
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from nas.search import SearchOptions, run

    spec = tmp_path / "asha.yaml"
    spec.write_text(ASHA_SPEC)
    run(spec, SearchOptions(runs_dir=tmp_path / "runs"), Console(file=io.StringIO(), width=200))
    root = tmp_path / "runs" / "asha"
    board = pd.read_csv(root / "leaderboard.csv")
    paused = board[board["reason"].fillna("").str.startswith("paused at epoch 1")]
    assert len(paused) >= 2 and (paused["epochs_run"] == 1).all()
    continued = board[board["continues"].notna()]
    assert len(continued) >= 1, board[["trial", "state", "reason", "epochs_run"]]
    for _, row in continued.iterrows():
        parent = int(row["continues"])
        assert parent in set(paused["trial"]) and row["epochs_run"] == 2  # epochs 2 and 3 only
        assert not (root / "checkpoints" / f"trial-{parent}.npz").exists()  # used up, removed
    waiting = set(paused["trial"]) - {int(p) for p in continued["continues"]}
    assert all((root / "checkpoints" / f"trial-{n}.npz").exists() for n in waiting)  # may still be promoted
    assert len(set(board["trial"])) - len(continued) == 6  # search.trials counts configurations
    # each configuration counts once, in its latest state: a continued trial's row says who took over
    used = board[board["trial"].isin(continued["continues"].astype(int))]
    assert (used["state"] == "continued").all() and used["reason"].str.contains("; continued by trial").all()
    assert set(board.loc[board["trial"].isin(waiting), "state"]) <= {"paused"}
    client = MlflowClient(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id],
                              filter_string="tags.`nas.resume_of` != ''")
    assert runs
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [1, 2, 3]
