"""One trial's training (nas.train.run_trial) on digits: what the spec's train settings do to the real model.

Each test builds the candidate from spec text through SearchSpace.decode, so a setting lost anywhere between
the YAML and the compiled Keras model turns it red. Observed from outside: the model run_trial builds (its
optimizer) and the epochs its hook is called for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nas.data import load_source, make_splits
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.trial import TrialTask

pytestmark = pytest.mark.slow

SPEC = """name: t
data: {source: digits}
space: {depth: 1, filters: 4, batch_norm: false, head: {depth: 0}}
train: TRAIN
"""


@pytest.fixture(scope="module")
def data() -> tuple[Any, DataInfo]:
    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    return splits, DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)


def train(data: tuple[Any, DataInfo], train_yaml: str, epochs: int) -> list[int]:
    """Run one trial of the spec; the epochs the hook saw."""
    from nas.train import run_trial

    splits, info = data
    candidate = SearchSpace(parse_spec(SPEC.replace("TRAIN", train_yaml))).decode({}, info)
    seen: list[int] = []

    def hook(epoch: int, metrics: dict[str, float]) -> str:
        seen.append(epoch)
        return "continue"

    run_trial(TrialTask(0, candidate, seed=0, epochs=epochs), splits, hook)
    return seen


@pytest.mark.parametrize(("train_yaml", "kind", "decay"), [
    ("{optimizer: adamw, learning_rate: 0.004, weight_decay: 0.03, epochs: 1}", "AdamW", 0.03),
    ("{optimizer: sgd, learning_rate: 0.004, weight_decay: 0.02, momentum: 0.8, epochs: 1}", "SGD", 0.02),
    ("{optimizer: adam, learning_rate: 0.004, weight_decay: 0.05, epochs: 1}", "Adam", None),  # README: adam stays plain
])
def test_the_compiled_model_gets_the_specs_optimizer_and_weight_decay(data, builds: list[Any], train_yaml: str,
                                                                      kind: str, decay: float | None) -> None:
    train(data, train_yaml, epochs=1)
    (model,) = builds
    opt = model.optimizer
    assert type(opt).__name__ == kind
    assert float(opt.learning_rate) == pytest.approx(0.004)
    assert opt.weight_decay == (None if decay is None else pytest.approx(decay))
    if kind == "SGD":
        assert opt.momentum == pytest.approx(0.8)
    assert int(opt.iterations) > 0  # it is the optimizer that trained the model


def test_early_stopping_ends_a_trial_after_patience_epochs_without_a_better_val_accuracy(data) -> None:
    # a learning rate this small leaves the weights (and so val_accuracy) unchanged: epoch 1 stays the best
    seen = train(data, "{learning_rate: 1e-9, early_stopping: 2, epochs: 10}", epochs=10)
    assert seen == [1, 2, 3]
    assert train(data, "{learning_rate: 1e-9, epochs: 4}", epochs=4) == [1, 2, 3, 4]  # without it: every epoch


@pytest.mark.usefixtures("deterministic_ops")
def test_a_trial_paused_and_resumed_from_its_checkpoint_ends_as_one_trained_straight_through(
        data: tuple[Any, DataInfo], builds: list[Any], tmp_path: Path) -> None:
    """The promise behind promoting a paused trial: nothing is lost, nothing differs. Everything that draws
    randomness or carries state is on: augmentation, dropout, batch norm, AdamW, a cosine schedule, a subset rung
    (the pause falls inside its span), and the resumed task runs in a process that has built other models since."""
    import numpy as np

    from nas.train import run_trial

    splits, info = data
    spec = SPEC.replace("TRAIN", "{optimizer: adamw, learning_rate: 0.01, weight_decay: 0.01, schedule: cosine, "
                                 "batch_size: 64}").replace("batch_norm: false", "batch_norm: true, dropout: 0.3")
    spec += "augment: {flip: horizontal, translation: 0.1, contrast: 0.2}\n"
    candidate = SearchSpace(parse_spec(spec)).decode({}, info)
    stages = ((2, 1 / 3), (4, 1.0))
    ckpt = tmp_path / "trial-0.npz"

    def task(**kw: Any) -> TrialTask:
        return TrialTask(0, candidate, seed=7, epochs=4, stages=stages, **kw)

    straight = run_trial(task(), splits, lambda e, m: "continue")
    final = builds[-1].get_weights()
    paused = run_trial(task(checkpoint_to=str(ckpt)), splits, lambda e, m: "pause" if e == 1 else "continue")
    assert paused.state == "paused" and paused.reason.startswith("paused at epoch 1") and ckpt.exists()
    assert paused.history == straight.history[:1]
    run_trial(task(), splits, lambda e, m: "continue")  # another model in between, as in a recycled worker
    seen: list[int] = []
    resumed = run_trial(task(resume_from=str(ckpt)), splits, lambda e, m: seen.append(e) or "continue")
    assert seen == [2, 3, 4] and resumed.state == "finished" and resumed.metrics["epochs_run"] == 3
    assert resumed.history == straight.history  # the whole curve, the epoch before the pause included
    assert resumed.metrics["best_epoch"] == straight.metrics["best_epoch"]
    assert all(np.array_equal(a, b) for a, b in zip(builds[-1].get_weights(), final, strict=True)), \
        "the resumed trial's weights differ from those of the trial trained straight through"


def test_a_checkpoint_for_another_candidate_is_refused(data: tuple[Any, DataInfo], tmp_path: Path) -> None:
    from nas.train import run_trial

    splits, info = data
    small = SearchSpace(parse_spec(SPEC.replace("TRAIN", "{batch_size: 64}"))).decode({}, info)
    wide = SearchSpace(parse_spec(SPEC.replace("TRAIN", "{batch_size: 64}").replace("filters: 4", "filters: 6"))
                       ).decode({}, info)
    ckpt = tmp_path / "c.npz"
    run_trial(TrialTask(0, small, seed=0, epochs=2, checkpoint_to=str(ckpt)), splits, lambda e, m: "pause")
    out = run_trial(TrialTask(0, wide, seed=0, epochs=2, resume_from=str(ckpt)), splits, lambda e, m: "continue")
    assert out.state == "failed" and "written for another candidate" in (out.reason or "")


def test_a_paused_trial_saves_its_best_epoch_when_it_beats_the_best_so_far(data: tuple[Any, DataInfo],
                                                                          tmp_path: Path) -> None:
    """A paused trial may be the search's best model (nas.objective): the worker saves its best epoch's weights,
    as for a finished trial, unless it cannot beat the current best (saving costs time)."""
    from nas.train import evaluate_model, run_trial

    splits, info = data
    candidate = SearchSpace(parse_spec(SPEC.replace("TRAIN", "{batch_size: 64, learning_rate: 0.01}"))
                            ).decode({}, info)

    def pause_at_3(epoch: int, metrics: dict[str, float]) -> str:
        return "pause" if epoch == 3 else "continue"

    saved = tmp_path / "pending" / "trial-0.keras"
    result = run_trial(TrialTask(0, candidate, seed=0, epochs=6, save_model_to=str(saved), save_threshold=0.0,
                                 checkpoint_to=str(tmp_path / "c.npz")), splits, pause_at_3)
    assert result.state == "paused" and result.model_path == str(saved) and saved.exists()
    best = max(h["val_accuracy"] for h in result.history)
    assert result.metrics["val_accuracy"] == best and result.metrics["val_samples"] == len(splits.val.y)
    assert evaluate_model(str(saved), splits, ("val",))["val_accuracy"] == pytest.approx(best, abs=1e-6)
    unbeatable = run_trial(TrialTask(1, candidate, seed=0, epochs=6, save_model_to=str(tmp_path / "t1.keras"),
                                     save_threshold=1.0), splits, pause_at_3)
    assert unbeatable.state == "paused" and unbeatable.model_path is None and not (tmp_path / "t1.keras").exists()
