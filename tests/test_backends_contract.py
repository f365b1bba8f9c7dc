"""The backend contract, run against every backend (as Optuna tests every sampler).

Each test drives a backend through search.py's seam (`open_backend`) with the real `TrialObjective`, the
real run directory and, where it matters, a real MLflow store; only training is replaced by `FakeRunner`,
which reports per-epoch metrics derived from the sampled learning rate and writes a stand-in model file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from nas.leaderboard import frame, write
from nas.objective import TrialObjective
from nas.progress import PlainReporter
from nas.rundir import RunDir, prepare
from nas.search import SearchOptions, current_best_value, open_backend
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.spec.loader import LoadedSpec
from nas.tracking import NullTracker, Tracker
from nas.trial import TrialResult, TrialTask

DIGITS = DataInfo(input_shape=(8, 8, 1), num_classes=10, pixel_max=16.0)

SPACE = """name: contract
data: {source: digits}
space:
  depth: DEPTH
  filters: [8, 16]
  kernel_size: [3, 5]
  batch_norm: [true, false]
  dropout: {low: 0.0, high: 0.4, step: 0.1}
  head: {depth: 1, width: {low: 16, high: 64, log: true}}
train:
  epochs: 3
  learning_rate: {low: 1e-4, high: 1e-1, log: true}
search:
"""

# Six trials for each backend: hyperband {max_epochs: 3, factor: 3} plans 3 trials x 1 epoch, 1 x 3, then 2 x 3.
BACKENDS: dict[str, str] = {
    "optuna-tpe": "  sampler: tpe\n  pruner: none\n  trials: 6\n  startup_trials: 2\n",
    "keras-tuner-hyperband": "  backend: keras-tuner\n  algorithm: hyperband\n  hyperband: {max_epochs: 3, factor: 3}\n",
    "keras-tuner-random": "  backend: keras-tuner\n  algorithm: random\n  trials: 6\n",
    "keras-tuner-bayesian": "  backend: keras-tuner\n  algorithm: bayesian\n  trials: 6\n  startup_trials: 4\n",
}


def score(lr: float) -> float:
    return 1 - abs(math.log10(lr) + 2.5) / 3


class FakeRunner:
    """Trains nothing: val_accuracy grows with the epoch towards a peak at learning rate ~3e-3."""

    device, framework = "CPU", "tensorflow"

    def __init__(self, interrupt_at: int | None = None):
        self.tasks: list[TrialTask] = []
        self.interrupt_at = interrupt_at

    def run(self, task: TrialTask, on_epoch: Any) -> TrialResult:
        self.tasks.append(task)
        if len(self.tasks) == self.interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a trial
        s = score(task.candidate.train.learning_rate)
        history = []
        for epoch in range(task.initial_epoch + 1, task.epochs + 1):
            acc = s * epoch / task.epochs
            metrics = {"loss": 1 - acc, "accuracy": acc, "val_loss": 1 - acc, "val_accuracy": acc}
            history.append(metrics)
            on_epoch(epoch, metrics)
        path = Path(task.save_model_to or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"trial {task.number}")
        metrics = {**history[-1], "best_epoch": float(len(history)), "epochs_run": float(len(history)),
                   "wall_time_s": 0.01}
        return TrialResult("finished", None, metrics, history, model_path=str(path))

    def evaluate(self, model_path: str, which: tuple[str, ...]) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class Session:
    """One `nas search` session of a backend, minus data loading and training."""

    def __init__(self, runs: Path, search: str, *, depth: str = "{low: 1, high: 3}", seed: int = 3,
                 tracker: Tracker | None = None, runner: FakeRunner | None = None):
        text = SPACE.replace("DEPTH", depth) + search + f"  seed: {seed}\n"
        self.spec = parse_spec(text, "contract.yaml")
        loaded = LoadedSpec(self.spec, runs / "contract.yaml", text)
        self.space = SearchSpace(self.spec)
        self.run_dir, resuming = prepare(runs, loaded, new=False)
        self.backend = open_backend(loaded, self.space, self.run_dir, SearchOptions(runs_dir=runs), resuming)
        self.tracker = tracker or NullTracker()
        self.tracker.start_search(run_name="contract", spec_path=Path(__file__), spec_hash=loaded.hash,
                                  resume_run_id=None, params={}, tags={})
        self.runner = runner or FakeRunner()
        self.calls: list[tuple[int, dict[str, Any], int]] = []
        objective = TrialObjective(space=self.space, data=DIGITS, runner=self.runner, tracker=self.tracker,
                                   reporter=PlainReporter(io.StringIO()), run=self.run_dir,
                                   objectives=self.spec.search.objectives, seed=self.spec.search.seed,
                                   best_value=current_best_value(self.run_dir, "val_accuracy"))

        calls = self.calls

        class Recorded:  # the real objective, with each call noted
            def __call__(self, number: int, params: dict[str, Any], **kw: Any) -> Any:
                calls.append((number, params, kw["epochs"]))
                return objective(number, params, **kw)

            def out_of_time(self) -> bool:
                return objective.out_of_time()

            def checkpoint_path(self, number: int) -> Path:
                return objective.checkpoint_path(number)

        self.objective = Recorded()

    def run(self) -> str:
        return self.backend.run(self.objective, on_trial_done=self.save_leaderboard)  # type: ignore[arg-type]

    def save_leaderboard(self) -> Any:
        df = frame(self.backend.rows(), self.spec.search.objectives)
        write(df, self.run_dir.leaderboard)
        return df


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.slow] if name.endswith("bayesian") else [])
                        for name in BACKENDS])
def search(request: pytest.FixtureRequest) -> str:
    """The spec's search section for one backend (Bayesian is slow: KerasTuner fits a GP for ~4 s a trial)."""
    return BACKENDS[request.param]


class TestBackendContract:
    def test_sampled_configs_lie_inside_the_space(self, tmp_path: Path, search: str) -> None:
        s = Session(tmp_path, search)
        s.run()
        assert s.calls and all(s.space.contains(params) for _, params, _ in s.calls)
        assert all(not any("/" in k for k in params) for _, params, _ in s.calls)  # no budget keys in params

    def test_trial_budget_is_respected(self, tmp_path: Path, search: str) -> None:
        s = Session(tmp_path, search)
        assert s.run() == "budget"
        assert s.backend.total == 6 and s.backend.done() == 6 == len(s.calls)
        epochs = [e for _, _, e in s.calls]
        assert all(1 <= e <= 3 for e in epochs)
        assert [t.epochs for t in s.runner.tasks] == epochs and all(t.initial_epoch == 0 for t in s.runner.tasks)
        if "hyperband" in search:  # successive halving: cheap trials first, the best config trained longer
            assert sorted(epochs) == [1, 1, 1, 3, 3, 3]
        else:
            assert epochs == [3] * 6
        # a rerun with a larger budget continues to it
        more = search.replace("trials: 6", "trials: 8") if "trials" in search else search + "  trials: 4\n"
        again = Session(tmp_path, more)
        again.run()
        expected = 4 if "hyperband" in search else 8  # hyperband: search.trials caps it; 6 already done
        assert again.backend.done() == max(6, expected) and len(again.calls) == max(0, expected - 6)

    def test_impossible_architectures_are_skipped_not_fatal(self, tmp_path: Path, search: str) -> None:
        # on 8x8 digits, 4 or 5 blocks of max pooling collapse the feature map: every trial is impossible
        s = Session(tmp_path, search, depth="[4, 5]")
        s.run()
        rows = s.backend.rows()
        assert len(rows) >= 4  # more than KerasTuner's default limit of 3 failed trials in a row
        assert {r["state"] for r in rows} == {"pruned"}
        assert all("cannot take 2x2 max pooling" in r["reason"] for r in rows)
        assert s.runner.tasks == []  # never trained
        assert (s.backend.counts()["finished"], s.backend.counts()["pruned"]) == (0, len(rows))

    def test_same_seed_same_sequence(self, tmp_path: Path, search: str) -> None:
        runs = [Session(tmp_path / name, search, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]
        for r in runs:
            r.run()
        a, b, c = (r.calls for r in runs)
        assert a == b  # seed 0 included: KerasTuner alone would read it as "no seed"
        assert a != c

    def test_mlflow_gets_one_child_run_per_trial(self, tmp_path: Path, search: str) -> None:
        from mlflow.tracking import MlflowClient

        from nas.tracking import MlflowTracker

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        s = Session(tmp_path, search, tracker=MlflowTracker(uri, "contract", tmp_path / "artifacts"))
        s.run()
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("contract")
        children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == len(s.calls) == 6
        by_trial = {int(r.data.tags["nas.trial"]): r for r in children}
        for number, params, epochs in s.calls:
            run = by_trial[number]
            assert run.data.params == {k: str(v) for k, v in params.items()}
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert [m.step for m in history] == list(range(1, epochs + 1))
            assert run.data.tags["nas.state"] == "finished" and run.info.status == "FINISHED"
            if "keras-tuner" in search:
                assert run.data.tags["keras_tuner.trial_id"] == f"{number:04d}"
            if "hyperband" in search:
                assert {"keras_tuner.bracket", "keras_tuner.round"} <= set(run.data.tags)
        if "hyperband" in search:
            rounds = {(r.data.tags["keras_tuner.bracket"], r.data.tags["keras_tuner.round"]) for r in children}
            assert rounds == {("1", "0"), ("1", "1"), ("0", "0")}

    def test_leaderboard_and_best_are_written(self, tmp_path: Path, search: str) -> None:
        import pandas as pd

        s = Session(tmp_path, search)
        s.run()
        df = pd.read_csv(s.run_dir.leaderboard)
        assert len(df) == 6 and set(df["state"]) == {"finished"}
        assert {"trial", "state", "val_accuracy", "params", "flops", "epochs_run", "wall_time_s", "reason",
                "param.depth", "param.train.learning_rate"} <= set(df.columns)
        assert df["val_accuracy"].is_monotonic_decreasing
        best = json.loads((s.run_dir.best / "trial.json").read_text())
        assert best["trial"] == int(df.iloc[0]["trial"])
        assert best["metrics"]["val_accuracy"] == pytest.approx(df.iloc[0]["val_accuracy"])
        assert (s.run_dir.best / "model.keras").read_text() == f"trial {best['trial']}"
        assert (s.run_dir.best / "arch.json").exists()

    def test_resume_after_interruption_keeps_finished_trials(self, tmp_path: Path, search: str) -> None:
        first = Session(tmp_path, search, runner=FakeRunner(interrupt_at=4))
        with pytest.raises(KeyboardInterrupt):
            first.run()
        kept = {r["trial"]: r for r in first.backend.rows() if r["state"] == "finished"}
        assert len(kept) == 3 and first.backend.done() == 3

        second = Session(tmp_path, search)  # the same command again
        assert second.backend.done() == 3
        second.run()
        assert second.backend.done() == 6 and len(second.calls) == 3  # nothing finished is run again
        after = {r["trial"]: r for r in second.backend.rows()}
        for number, row in kept.items():
            assert after[number]["state"] == "finished"
            assert after[number]["val_accuracy"] == row["val_accuracy"]
            assert {k: v for k, v in after[number].items() if k.startswith("param.")} == \
                   {k: v for k, v in row.items() if k.startswith("param.")}
