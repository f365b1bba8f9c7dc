"""nas.search end to end, in this process, on digits: spec settings that only a whole search exercises.

One multi-objective search is shared by several tests: `objectives: [val_accuracy, params]`, `max_params`,
`isolate_trials: false`, `tracking.enabled: false` and `--storage journal:<file>` all at once, each test
reading its own promise off the same run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

MAX_PARAMS = 3000
SPEC = f"""\
name: mo
data: {{source: digits, validation_fraction: 0.2}}
space:
  depth: {{low: 1, high: 2}}
  filters: [4, 64]
  pooling: [max, none]
  head: {{type: flatten, depth: 0}}
  max_params: {MAX_PARAMS}
train: {{epochs: 1, batch_size: 64, learning_rate: 0.005}}
search:
  sampler: random
  pruner: none
  trials: 6
  seed: 0
  objectives: [val_accuracy, params]
  isolate_trials: false
tracking: {{enabled: false}}
"""


def search(spec: Path, runs: Path, **options: Any) -> Any:
    from rich.console import Console

    from nas.search import SearchOptions, run

    return run(spec, SearchOptions(runs_dir=runs, **options), Console(file=io.StringIO(), width=200))


@pytest.fixture(scope="module")
def mo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import nas.train

    tmp = tmp_path_factory.mktemp("mo")
    spec = tmp / "mo.yaml"
    spec.write_text(SPEC)
    real, built = nas.train.build_model, []

    def build(arch: Any) -> Any:
        built.append(real(arch))
        return built[-1]

    cwd = os.getcwd()
    nas.train.build_model = build  # seen only if trials run in this process
    os.chdir(tmp)  # a stray default store would land here
    try:
        search(spec, tmp / "runs", storage=f"journal:{tmp / 'journal.log'}")
    finally:
        nas.train.build_model = real
        os.chdir(cwd)
    board = pd.read_csv(tmp / "runs" / "mo" / "leaderboard.csv", keep_default_na=False, na_values=[""])
    return {"tmp": tmp, "run": tmp / "runs" / "mo", "board": board, "built": built}


def test_max_params_rejects_large_models_before_training(mo: dict[str, Any]) -> None:
    from nas.arch import plan
    from nas.space import DataInfo, SearchSpace
    from nas.spec import parse_spec

    space, data = SearchSpace(parse_spec(SPEC)), DataInfo((8, 8, 1), 10, 16.0)
    sizes = {}
    for _, row in mo["board"].iterrows():  # each trial's size, recomputed from its sampled params
        params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.") and not pd.isna(v)}
        sizes[row["trial"]] = plan(space.decode(params, data).arch).params
    board = mo["board"].set_index("trial")
    large = [t for t, n in sizes.items() if n > MAX_PARAMS]
    assert large and len(large) < len(sizes), "the sampled trials must include both sizes"
    for t in large:
        assert board.loc[t, "state"] == "pruned"
        assert board.loc[t, "reason"] == f"{sizes[t]:,} parameters exceed space.max_params 3,000; rejected before training"
        assert board.loc[t, "epochs_run"] == 0 and board.loc[t, "params"] == sizes[t]  # its size is shown
    assert all(board.loc[t, "state"] == "finished" for t in sizes if t not in large)
    assert all(m.count_params() <= MAX_PARAMS for m in mo["built"])  # never built for training


def test_isolate_trials_false_trains_in_this_process(mo: dict[str, Any]) -> None:
    board = mo["board"]
    assert len(mo["built"]) == (board["state"] == "finished").sum() >= 1
    assert not (mo["run"] / "worker.log").exists()


def test_tracking_disabled_writes_no_mlflow_store(mo: dict[str, Any]) -> None:
    everything = {p.name for p in mo["tmp"].rglob("*")}
    assert not {"mlflow.db", "mlartifacts", "mlruns"} & everything, sorted(everything)
    assert (mo["run"] / "best" / "model.keras").exists()  # the search itself still delivers


def test_journal_storage_holds_the_multi_objective_study(mo: dict[str, Any]) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    assert not (mo["run"] / "study.db").exists()
    storage = JournalStorage(JournalFileBackend(str(mo["tmp"] / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(len(t.values) == 2 for t in done)
    assert len(study.trials) == len(mo["board"]) == 6


def test_multi_objective_search_ends_with_both_objectives_recorded(mo: dict[str, Any]) -> None:
    board = mo["board"]
    finished = board[board["state"] == "finished"]
    assert finished["val_accuracy"].between(0, 1).all() and (finished["params"] > 0).all()
    metrics = json.loads((mo["run"] / "best" / "metrics.json").read_text())
    assert [o["metric"] for o in metrics["objectives"]] == ["val_accuracy", "params"]
    assert metrics["trial"] in set(finished["trial"])
    assert metrics["test_samples"] > 300 and 0 <= metrics["test_accuracy"] <= 1


def test_worker_max_trials_reaches_the_worker(tiny_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec's value is what the process runner is built with (tests/test_worker.py shows the runner
    replaces its process after that many trials). Trials run inline here to keep this test fast."""
    import nas.worker

    made: list[dict[str, Any]] = []

    def runner(splits: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(kwargs)
        return nas.worker.InlineRunner(splits)

    monkeypatch.setattr(nas.worker, "ProcessRunner", runner)
    spec = tiny_spec(name="recycled", epochs=1, trials=1,
                     extra="tracking: {enabled: false}\n").read_text().replace("search:\n", "search:\n  worker_max_trials: 3\n")
    (tmp_path / "recycled.yaml").write_text(spec)
    search(tmp_path / "recycled.yaml", tmp_path / "runs")
    assert [m.get("max_tasks") for m in made] == [3]
