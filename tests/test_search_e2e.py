"""End to end through the real CLI on digits: outputs, MLflow runs, resume, seeds, changed spec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
NAS = [sys.executable, "-m", "nas"]


def nas(*args: object, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*NAS, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def mlflow_runs(runs_dir: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_search_writes_outputs_and_mlflow_runs(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=3, epochs=2), tmp_path / "runs"
    # batch 16: enough steps in 2 epochs that the winner has clearly learned digits (at 64 it sits at 0.25-0.5)
    spec.write_text(spec.read_text().replace("batch_size: 64", "batch_size: 16"))
    r = nas("search", spec, "--runs-dir", runs)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    run = runs / "tiny"
    df = pd.read_csv(run / "leaderboard.csv")
    assert len(df) == 3 and set(df["state"]) <= {"finished", "pruned"}
    assert {"trial", "state", "val_accuracy", "params", "flops", "epochs_run", "wall_time_s", "param.depth"} <= set(df.columns)
    assert (run / "spec.yaml").read_text() == spec.read_text()

    # best/: the model reloads without nas, arch.json alone rebuilds the same network
    import keras

    from nas.arch import ArchConfig
    from nas.builder import build_model

    model = keras.models.load_model(run / "best" / "model.keras")
    arch = ArchConfig.from_json((run / "best" / "arch.json").read_text())
    assert build_model(arch).count_params() == model.count_params()
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and metrics["test_samples"] > 300
    assert metrics["trial"] == int(df.iloc[0]["trial"])

    runs_ = mlflow_runs(runs, "tiny")
    parents = [x for x in runs_ if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs_ if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["nas.spec_hash"]
    for child in children:
        assert {"depth", "train.learning_rate"} <= set(child.data.params)
        state = child.data.tags["nas.state"]
        assert child.info.status == {"finished": "FINISHED", "pruned": "KILLED"}[state]
        if state == "finished":
            assert {"val_accuracy", "loss", "best_val_accuracy", "params", "flops", "epochs_run",
                    "wall_time_s"} <= set(child.data.metrics)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    finished = [c for c in children if c.data.tags["nas.state"] == "finished"]
    history = client.get_metric_history(finished[0].info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "best")}
    assert "best/model.keras" in artifacts


def test_same_seed_same_params_and_metrics(tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(trials=2, epochs=1, seed=7)
    frames = []
    for name in ("a", "b"):
        r = nas("search", spec, "--runs-dir", tmp_path / name)
        assert r.returncode == 0, r.stderr
        frames.append(pd.read_csv(tmp_path / name / "tiny" / "leaderboard.csv").sort_values("trial"))
    cols = [c for c in frames[0].columns if c.startswith("param.")] + ["val_accuracy", "val_loss", "params"]
    pd.testing.assert_frame_equal(frames[0][cols].reset_index(drop=True), frames[1][cols].reset_index(drop=True))


def test_ctrl_c_keeps_finished_trials_and_rerun_resumes(tiny_spec, tmp_path: Path) -> None:
    spec, runs = tiny_spec(trials=4, epochs=3), tmp_path / "runs"
    board = runs / "tiny" / "leaderboard.csv"
    proc = subprocess.Popen([*NAS, "search", str(spec), "--runs-dir", str(runs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not board.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert board.exists(), "no trial finished in time"
    time.sleep(1.0)  # into the next trial
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: nas search" in err and "Traceback" not in err
    kept = pd.read_csv(board)
    done_before = kept[kept["state"].isin(["finished", "pruned"])]
    assert len(done_before) >= 1
    assert all(r.info.status != "RUNNING" for r in mlflow_runs(runs, "tiny"))

    r = nas("search", spec, "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    after = pd.read_csv(board)
    done = after[after["state"].isin(["finished", "pruned"])]
    assert len(done) == 4
    # the trials finished before the interrupt are kept, not re-run
    for _, row in done_before.iterrows():
        same = after[after["trial"] == row["trial"]].iloc[0]
        assert same["val_accuracy"] == pytest.approx(row["val_accuracy"], nan_ok=True)
    parents = [x for x in mlflow_runs(runs, "tiny") if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_changed_spec_is_refused_unless_new(tiny_spec, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = tiny_spec(trials=1, epochs=1)
    assert nas("search", spec, "--runs-dir", runs).returncode == 0
    spec.write_text(spec.read_text().replace("filters: [8, 16]", "filters: [8, 32]"))
    r = nas("search", spec, "--runs-dir", runs)
    assert r.returncode == 2
    assert "created by a different spec (changed: space.filters)" in r.stderr
    assert "Traceback" not in r.stderr
    r = nas("search", spec, "--runs-dir", runs, "--new")
    assert r.returncode == 0, r.stderr
    assert len(list(runs.glob("tiny.*"))) == 1  # the old run, moved aside, not deleted


def test_more_trials_resume_the_same_search(tiny_spec, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = tiny_spec(trials=1, epochs=1)
    assert nas("search", spec, "--runs-dir", runs).returncode == 0
    r = nas("search", spec, "--runs-dir", runs, "--trials", "2")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(runs / "tiny" / "leaderboard.csv")) == 2
