"""train.schedule: the learning rate the compiled optimizer really uses, step by step, against the formulas
(README, "Learning-rate schedule"); a resumed trial continuing the schedule; save/load; the spec key; export.

Every model here is compiled through nas (compile_for_training, run_trial, export's _fit) from a candidate
decoded from spec text, so a schedule lost anywhere between the YAML and the optimizer turns a test red.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.spec.loader import LoadedSpec, flat_keys

SPEC = """name: t
data: {source: digits}
space: {depth: 1, filters: 4, batch_norm: false, head: {depth: 0}}
train: TRAIN
"""
LR = 0.01


def candidate(train_yaml: str, params: dict[str, Any] | None = None, shape: tuple[int, int, int] = (8, 8, 1)) -> Any:
    info = DataInfo(shape, 3, 16.0)
    return SearchSpace(parse_spec(SPEC.replace("TRAIN", train_yaml))).decode(params or {}, info)


def expected(schedule: str, warmup: float, step: int, total: int, lr: float = LR) -> float:
    """The README's formulas, written out independently of nas.schedule."""
    ramp = math.floor(warmup * total)
    cos = 0.5 * (1 + math.cos(math.pi * min(step - ramp, total - ramp) / (total - ramp)))
    if schedule == "constant":
        return lr * step / ramp if step < ramp else lr
    if schedule == "cosine":
        return lr * step / ramp if step < ramp else lr * cos
    low, end = lr / 25, lr / 25 / 1e4
    return low + (lr - low) * step / ramp if step < ramp else end + (lr - end) * cos


class _Rates:
    """Keras callback: the optimizer's learning rate at the start of every step (the rate that step applies)."""

    def __new__(cls) -> Any:
        import keras

        class Rates(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seen: list[float] = []

            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                self.seen.append(float(self.model.optimizer.learning_rate))

        return Rates()


def tiny_fit(cand: Any, *, epochs: int, initial_epoch: int = 0, steps: int = 10) -> tuple[Any, list[float]]:
    """A 1-layer model compiled by nas.train.compile_for_training, fit on `steps` batches per epoch."""
    import keras
    from nas.schedule import start_at_epoch
    from nas.train import compile_for_training

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    compile_for_training(model, cand.train, steps_per_epoch=steps, epochs=epochs)
    start_at_epoch(model.optimizer, initial_epoch, steps)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(steps * 4, 4)).astype("float32"), np.eye(3)[rng.integers(0, 3, steps * 4)]
    rates = _Rates()
    model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=[rates])
    return model, rates.seen


# ---- the spec key --------------------------------------------------------------------------------------------

def test_schedule_fixed_and_as_a_choice_reach_the_candidate() -> None:
    fixed = candidate(f"{{schedule: cosine, learning_rate: {LR}}}")
    assert (fixed.train.schedule, fixed.train.warmup) == ("cosine", 0.05)  # its default warm-up
    assert candidate("{schedule: one_cycle, warmup: 0.4}").train.warmup == 0.4
    assert (candidate("{}").train.schedule, candidate("{}").train.warmup) == ("constant", 0.0)

    space = SearchSpace(parse_spec(SPEC.replace("TRAIN", "{schedule: [constant, one_cycle]}")))
    assert space.dims["train.schedule"].values == ("constant", "one_cycle")  # type: ignore[union-attr]
    picked = candidate("{schedule: [constant, one_cycle]}", {"train.schedule": "one_cycle"})
    assert (picked.train.schedule, picked.train.warmup) == ("one_cycle", 0.25)


def test_a_schedule_typo_is_rejected_with_did_you_mean() -> None:
    from nas.errors import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace("TRAIN", "{schedule: cosin}"), "s.yaml")
    assert "train.schedule" in str(err.value) and "Did you mean 'cosine'?" in str(err.value)
    with pytest.raises(SpecError, match="train.warmup"):
        parse_spec(SPEC.replace("TRAIN", "{warmup: 1.5}"), "s.yaml")


def test_specs_without_the_key_keep_their_hash_so_old_runs_resume() -> None:
    # hashes of these texts computed by the code before train.schedule existed (commit 539b6e3)
    old = {"name: t\ndata: {source: digits}\nspace: {depth: 2}\n": "473f163b57347849",
           "name: t\ndata: {source: digits}\nspace: {depth: 2}\ntrain: {optimizer: [adam, sgd], epochs: 3}\n":
               "66eda2f16bcc7c55"}
    for text, digest in old.items():
        assert LoadedSpec(parse_spec(text), Path("x.yaml"), "").hash == digest
    explicit = parse_spec("name: t\ndata: {source: digits}\nspace: {depth: 2}\ntrain: {schedule: constant}\n")
    assert LoadedSpec(explicit, Path("x.yaml"), "").hash == "473f163b57347849"
    other = flat_keys(parse_spec("name: t\ndata: {source: digits}\nspace: {depth: 2}\ntrain: {schedule: cosine}\n"))
    assert other["train.schedule"] == "cosine"  # a different recipe is a different search


# ---- the rate the optimizer uses -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("train_yaml", "schedule", "warmup"), [
    (f"{{learning_rate: {LR}}}", "constant", 0.0),
    (f"{{learning_rate: {LR}, warmup: 0.2}}", "constant", 0.2),
    (f"{{learning_rate: {LR}, schedule: cosine}}", "cosine", 0.05),
    (f"{{learning_rate: {LR}, schedule: cosine, warmup: 0.0}}", "cosine", 0.0),
    (f"{{learning_rate: {LR}, schedule: one_cycle}}", "one_cycle", 0.25),
])
def test_each_step_uses_the_schedules_rate(train_yaml: str, schedule: str, warmup: float) -> None:
    _, seen = tiny_fit(candidate(train_yaml), epochs=4)  # 40 planned steps
    total = 40
    assert len(seen) == total
    assert seen == pytest.approx([expected(schedule, warmup, s, total) for s in range(total)], rel=1e-4, abs=1e-9)
    ramp = math.floor(warmup * total)
    if ramp:  # the ramp: linear, reaching the peak (one_cycle: from lr/25)
        start = LR / 25 if schedule == "one_cycle" else 0.0
        assert seen[0] == pytest.approx(start) and seen[ramp // 2] == pytest.approx((start + LR) / 2, rel=0.1)
        assert seen[ramp] == pytest.approx(LR) and max(seen) == pytest.approx(LR)
    if schedule != "constant":  # annealed to (almost) nothing by the planned end
        assert seen[-1] < LR * 0.01
        assert all(a >= b for a, b in zip(seen[ramp:], seen[ramp + 1:], strict=False))
    else:
        assert seen[ramp:] == pytest.approx([LR] * (total - ramp))


@pytest.mark.slow
def test_resuming_at_initial_epoch_continues_the_schedule() -> None:
    cand = candidate(f"{{learning_rate: {LR}, schedule: one_cycle}}")
    _, straight = tiny_fit(cand, epochs=4)
    _, resumed = tiny_fit(cand, epochs=4, initial_epoch=2)
    assert resumed == pytest.approx(straight[20:], rel=1e-6)


@pytest.mark.slow
def test_run_trial_spans_the_trials_planned_epochs_and_resumes_mid_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through run_trial: the rate at each epoch's end, read off the model run_trial built."""
    import nas.train
    from nas.data import load_source, make_splits
    from nas.trial import TrialTask

    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
    cand = SearchSpace(parse_spec(SPEC.replace("TRAIN", f"{{learning_rate: {LR}, schedule: cosine, batch_size: 256}}"))
                       ).decode({}, info)
    models: list[Any] = []
    real = nas.train.build_model
    monkeypatch.setattr(nas.train, "build_model", lambda arch: models.append(real(arch)) or models[-1])

    def rates(task: TrialTask) -> dict[int, float]:
        seen: dict[int, float] = {}

        def hook(epoch: int, metrics: dict[str, float]) -> str:
            seen[epoch] = float(models[-1].optimizer.learning_rate)
            return "continue"

        nas.train.run_trial(task, splits, hook)
        return seen

    steps = math.ceil(len(splits.train.y) / 256)
    straight = rates(TrialTask(0, cand, seed=0, epochs=4))
    total = 4 * steps
    assert straight == pytest.approx({e: expected("cosine", 0.05, e * steps, total) for e in (1, 2, 3, 4)}, abs=1e-7)
    assert straight[4] == pytest.approx(0.0, abs=1e-9)  # the schedule ends where the trial's planned epochs end
    resumed = rates(TrialTask(0, cand, seed=0, epochs=4, initial_epoch=2))
    assert resumed == pytest.approx({3: straight[3], 4: straight[4]}, abs=1e-9)


@pytest.mark.slow
def test_a_saved_model_round_trips_its_schedule_and_loads_without_nas(tmp_path: Path) -> None:
    import keras

    model, seen = tiny_fit(candidate(f"{{learning_rate: {LR}, schedule: cosine}}"), epochs=4)
    model.fit(np.zeros((8, 4), "float32"), np.eye(3)[[0] * 8], batch_size=4, epochs=1, verbose=0)  # 2 past the end
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.get_config()["learning_rate"] == model.optimizer.get_config()["learning_rate"]
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 42
    assert float(loaded.optimizer.learning_rate) == float(model.optimizer.learning_rate)
    # the exported-model contract: loading needs Keras alone, not nas
    code = ("import sys; sys.modules['nas'] = None; import keras; m = keras.models.load_model(sys.argv[1]); "
            "print(type(m.optimizer.get_config()['learning_rate']).__name__, "
            "m.optimizer.get_config()['learning_rate']['class_name'], int(m.optimizer.iterations))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["dict", "CosineDecay", "42"]


@pytest.mark.slow
def test_exports_retrain_uses_the_schedule_over_its_own_epochs() -> None:
    from nas.builder import build_model
    from nas.export.pipeline import _fit

    cand = candidate(f"{{learning_rate: {LR}, schedule: cosine, batch_size: 16, epochs: 7}}")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 17, size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    model = build_model(cand.arch)
    _fit(model, cand, x, y, epochs=3, seed=0)  # retrain_epochs 3, not the search's 7
    total = 3 * 4
    schedule = model.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["decay_steps"] + schedule["config"]["warmup_steps"] == total
    assert int(model.optimizer.iterations) == total and float(model.optimizer.learning_rate) == pytest.approx(0.0)


@pytest.mark.slow
def test_exports_retrain_replays_the_endgames_decay() -> None:
    """A finalist whose rate decayed after its pause (search.endgame) is retrained with the same decay: without it
    the export would train at the constant rate to the end, a model the search never validated."""
    import keras

    from nas.builder import build_model
    from nas.export.pipeline import _fit
    from nas.train import decay_after

    cand = candidate(f"{{learning_rate: {LR}, batch_size: 16, epochs: 2}}")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 17, size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    rates = []
    model = build_model(cand.arch)
    seen = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: rates.append(float(model.optimizer.learning_rate)))
    _fit(model, cand, x, y, epochs=4, seed=0, callbacks=[seen], decay=(2, 5))  # paused at 2, planned to 5
    # independently: epochs 3, 4 at the midpoints of a cosine over the 3 epochs after 2
    cosine = [LR * 0.5 * (1 + math.cos(math.pi * (k - 0.5) / 3)) for k in (1, 2)]
    assert rates == pytest.approx([LR, LR, *cosine])
    assert [decay_after(LR, 2, 5)(i, LR) for i in range(4)] == pytest.approx(rates)
