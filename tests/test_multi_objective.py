"""Multi-objective search true to deployment: measured objectives, constraints, the pareto pruner, the front,
and export.select. Fast tests on the spec, the front and the pruner; one real search on digits."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from nas.backends.pareto import CURVE, ParetoPruner
from nas.errors import NasError
from nas.front import knee, pareto_mask, select
from nas.leaderboard import frame
from nas.spec import parse_spec
from nas.spec.model import Objective, SelectRule

BASE = "name: t\ndata: {source: digits}\nspace: {depth: 1, filters: 8}\n"


def spec_error(extra: str) -> str:
    with pytest.raises(NasError) as exc:
        parse_spec(BASE + extra, "x.yaml")
    return str(exc.value)


# --- the spec -------------------------------------------------------------------------------------------------

def test_constraints_parse_and_dump_as_written() -> None:
    spec = parse_spec(BASE + "search:\n  objectives: [val_accuracy, latency_ms]\n  constraints:\n"
                      "    params: '<= 100000'\n    latency_ms: '< 0.5'\n    int8_val_accuracy: '>=0.9'\n")
    c = spec.search.constraints
    assert (c["params"].op, c["params"].value) == ("<=", 100000)
    assert c["latency_ms"].holds(0.49) and not c["latency_ms"].holds(0.5)
    assert c["latency_ms"].excess(0.5) > 0 and c["params"].excess(100000) == 0  # strict bound met exactly: broken
    assert c["int8_val_accuracy"].excess(0.95) < 0 < c["int8_val_accuracy"].excess(0.8)
    assert spec.model_dump(mode="json")["search"]["constraints"] == {
        "params": "<= 100000", "latency_ms": "< 0.5", "int8_val_accuracy": ">= 0.9"}
    assert spec.search.measured == {"latency_ms", "int8_val_accuracy"}
    assert spec.search.pruner == "pareto"  # the default with several objectives


def test_specs_without_the_new_keys_keep_their_dump() -> None:
    dumped = parse_spec(BASE).model_dump(mode="json")
    assert "constraints" not in dumped["search"] and "measure_on" not in dumped["search"]
    assert "select" not in dumped["export"]  # so runs searched before keep their spec hash


@pytest.mark.parametrize("extra, expected", [
    ("search:\n  constraints:\n    params: '=< 10'\n",
     "x.yaml:6: search.constraints.params: expected a comparison such as '<= 0.5'"),
    ("search:\n  constraints:\n    params: 100\n", "x.yaml:6: search.constraints.params: expected a comparison"),
    ("search:\n  constraints:\n    test_accuracy: '>= 0.9'\n",
     "x.yaml:6: search.constraints.test_accuracy: 'test_accuracy' is not a metric nas measures on every trial"),
    ("search:\n  objectives: [val_accuracy, latency]\n", "x.yaml:5: search.objectives.1.metric: expected one of"),
    ("train: {backend: jax}\nsearch:\n  objectives: [val_accuracy, size_kb]\n",
     "x.yaml:6: search.objectives: size_kb is measured on each trial's TFLite artifact"),
    ("train: {backend: torch}\nsearch:\n  constraints: {latency_ms: '<= 1'}\n",
     "x.yaml:6: search.constraints.latency_ms: latency_ms is measured"),
    ("search:\n  objectives: [val_accuracy, params]\n  pruner: median\n",
     "pruner 'median' needs a single objective, but 2 objectives are set; set `pruner: pareto`"),
    ("search:\n  backend: keras-tuner\n  objectives: [int8_val_accuracy]\n",
     "objective int8_val_accuracy needs backend optuna"),
    ("export:\n  select: {where: {latency_ms: '<= 1.0'}}\n",
     "x.yaml:5: export.select: export.select needs exactly one of `maximize: <metric>` or `minimize: <metric>`"),
    ("export:\n  select: kne\n", "x.yaml:5: export.select: expected one of 'best' or 'knee', got 'kne'. Did you mean"),
])
def test_bad_multi_objective_input_names_file_line_and_key(extra: str, expected: str) -> None:
    message = spec_error(extra)
    assert expected in message, message
    assert "Traceback" not in message


def test_validate_refuses_a_constraint_no_model_of_the_space_meets(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(BASE.replace("depth: 1, filters: 8", "depth: [1, 2], filters: [8, 16]")
                    + "search:\n  constraints:\n    params: '<= 10'\n")
    r = subprocess.run([sys.executable, "-m", "nas", "validate", str(spec)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{spec}:6: search.constraints.params: no model of this space meets '<= 10': the smallest trainable " \
           "one has" in r.stderr
    assert "Traceback" not in r.stderr
    smallest = int(r.stderr.split("the smallest trainable one has ")[1].split(" params")[0].replace(",", ""))
    assert f"parameters: smallest {smallest:,}" in r.stdout  # the same floor as the survey's


# --- the front and export.select -------------------------------------------------------------------------------

OBJ = [Objective(metric="val_accuracy"), Objective(metric="latency_ms")]


def board() -> pd.DataFrame:
    rows = [  # trial, state, val_accuracy, latency_ms, feasible
        (0, "finished", 0.90, 2.0, True),   # front: the most accurate
        (1, "finished", 0.85, 0.5, True),   # front: the knee
        (2, "finished", 0.60, 0.2, True),   # front: the fastest
        (3, "finished", 0.80, 1.0, True),   # dominated by 1
        (4, "finished", 0.95, 0.1, False),  # would dominate all, but breaks a constraint
        (5, "pruned", 0.99, math.nan, ""),
    ]
    return frame([{"trial": t, "state": s, "val_accuracy": a, "latency_ms": lat, "feasible": f, "params": 1000.0}
                  for t, s, a, lat, f in rows], OBJ)


def test_pareto_column_marks_the_feasible_nondominated_trials() -> None:
    df = board()
    assert sorted(df[df["pareto"]]["trial"]) == [0, 1, 2]
    assert list(pareto_mask(df, [Objective(metric="val_accuracy")]).index[pareto_mask(
        df, [Objective(metric="val_accuracy")])]) == [df.index[df["trial"] == 0][0]]


def test_export_select_rules() -> None:
    df = board()
    assert select(df, "best", OBJ)[0] == 0  # infeasible trial 4 is never the winner
    trial, why = knee(df, OBJ)
    assert trial == 1 and "knee of the Pareto front of 3 trials" in why
    trial, why = select(df, SelectRule(maximize="val_accuracy", where={"latency_ms": "<= 1.0"}), OBJ)
    assert trial == 1 and why == "the highest val_accuracy (0.85) among 3 finished trials with latency_ms <= 1"
    assert select(df, SelectRule(minimize="latency_ms"), OBJ)[0] == 2
    with pytest.raises(NasError, match="no finished trial has latency_ms < 0.05"):
        select(df, SelectRule(maximize="val_accuracy", where={"latency_ms": "< 0.05"}), OBJ)
    with pytest.raises(NasError, match="no trial has size_kb; the search did not measure it"):
        select(df, SelectRule(minimize="size_kb"), OBJ)


# --- the pareto pruner -----------------------------------------------------------------------------------------

def _study(peers: list[tuple[float, float, dict[int, float]]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for params, flops, curve in peers:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=[max(curve.values()), params],
            user_attrs={"params": params, "flops": flops, CURVE: {str(k): v for k, v in curve.items()}}))
    return study


def test_pareto_pruner_prunes_a_large_trial_behind_smaller_ones_but_never_the_smallest() -> None:
    pruner = ParetoPruner.for_objectives(OBJ, warmup_epochs=1, startup_trials=0)
    assert pruner is not None and pruner.metric == "val_accuracy"
    study = _study([(1000, 1e5, {1: 0.5, 2: 0.70}), (2000, 2e5, {1: 0.6, 2: 0.80}), (50000, 5e6, {1: 0.7, 2: 0.95})])
    big = {"params": 40000.0, "flops": 4e6}
    why = pruner.decide(study, 99, 2, 0.72, big)  # dominated: two smaller peers, median 0.75
    assert why is not None and "trails the median 0.7500 of the 2 trials no larger" in why
    assert pruner.decide(study, 99, 2, 0.76, big) is None  # ahead of the smaller peers' median
    assert pruner.decide(study, 99, 2, 0.10, {"params": 500.0, "flops": 5e4}) is None  # the smallest: no peers
    assert pruner.decide(study, 99, 2, 0.10, {"params": 1500.0, "flops": 1.5e5}) is None  # one peer is too few
    assert pruner.decide(study, 99, 1, 0.50, big) is not None  # from warmup_epochs on, as Optuna's median pruner
    late = ParetoPruner.for_objectives(OBJ, warmup_epochs=2, startup_trials=0)
    assert late is not None and late.decide(study, 99, 1, 0.10, big) is None  # within warmup_epochs
    patient = ParetoPruner.for_objectives(OBJ, warmup_epochs=1, startup_trials=4)
    assert patient is not None and patient.decide(study, 99, 2, 0.10, big) is None  # 3 finished < startup_trials
    assert ParetoPruner.for_objectives([Objective(metric="params"), Objective(metric="latency_ms")], 1, 0) is None
    int8 = ParetoPruner.for_objectives([Objective(metric="int8_val_accuracy"), Objective(metric="size_kb")], 1, 0)
    assert int8 is not None and int8.metric == "val_accuracy"  # watched through its float proxy


# --- measured on the artifact ----------------------------------------------------------------------------------

def test_measure_gives_latency_size_and_int8_accuracy_of_the_tflite_artifact() -> None:
    import keras
    import numpy as np

    from nas.builder import build_model
    from nas.data_info import load_splits
    from nas.deployed import measure
    from nas.space import SearchSpace
    from nas.spec.loader import LoadedSpec

    spec = parse_spec(BASE)
    splits, info, _ = load_splits(LoadedSpec(spec=spec, path=Path("t.yaml").resolve(), text=BASE))
    candidate = SearchSpace(spec).decode({}, info)
    keras.utils.set_random_seed(0)
    model = build_model(candidate.arch)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(splits.train.x, splits.train.y, epochs=20, batch_size=64, verbose=0)
    float_acc = float((model.predict(splits.val.x, verbose=0).argmax(axis=1) == splits.val.y).mean())
    out = measure(model, splits, {"latency_ms", "size_kb", "int8_val_accuracy"})
    assert 0 < out["latency_ms"] < 50 and 0 < out["measure_s"] < 120
    assert 0.5 < out["size_kb"] < 50  # a few hundred int8 weights, gzipped
    assert float_acc > 0.5 and abs(out["int8_val_accuracy"] - float_acc) < 0.1
    f32 = measure(model, splits, {"size_kb"}, on="float32")
    assert "int8_val_accuracy" not in f32 and f32["size_kb"] > out["size_kb"]  # float32 weights are 4x the bytes
    assert np.isfinite(f32["latency_ms"])


# --- a real search ---------------------------------------------------------------------------------------------

MO_SPEC = """\
name: front
data: {source: digits, validation_fraction: 0.2}
space:
  depth: {low: 1, high: 2}
  filters: [4, 8, 32]
  pooling: [max, none]
  head: {type: gap, depth: 0}
train: {epochs: 3, batch_size: 64, learning_rate: 0.005}
search:
  sampler: nsga2
  trials: 6
  seed: 0
  startup_trials: 0
  objectives: [val_accuracy, latency_ms]
  constraints: {size_kb: '<= SIZE', params: '<= 1000'}
  isolate_trials: false
export:
  select: {maximize: val_accuracy, where: {size_kb: '<= SIZE'}}
"""


@pytest.mark.slow
def test_a_two_objective_search_measures_constrains_marks_the_front_and_exports_by_rule(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from nas.export.source import choose
    from nas.search import SearchOptions, run
    from nas.tracking import default_tracking_uri

    spec = tmp_path / "front.yaml"
    size = 2.1
    spec.write_text(MO_SPEC.replace("SIZE", str(size)))
    out = io.StringIO()
    run(spec, SearchOptions(runs_dir=tmp_path / "runs"), Console(file=out, width=220))
    text = out.getvalue()
    df = pd.read_csv(tmp_path / "runs" / "front" / "leaderboard.csv")
    done = df[df["state"] == "finished"]
    assert len(done) >= 2, text
    for col in ("latency_ms", "size_kb", "int8_val_accuracy", "measure_s"):  # measured on every finished trial
        assert done[col].notna().all() and (done[col] > 0).all(), col
    assert df[df["state"] != "finished"]["latency_ms"].isna().all()  # pruned trials never pay for it
    assert (done["feasible"] == (done["size_kb"] <= size)).all()
    rejected = df[df["params"] > 1000]
    assert len(rejected) and (rejected["state"] == "pruned").all() and (rejected["epochs_run"] == 0).all()
    assert rejected["reason"].str.contains("break search.constraints.params '<= 1000'; rejected before training").all()
    assert done["feasible"].any(), done

    feasible = done[done["feasible"]]
    expected = {int(r.trial) for r in feasible.itertuples() if not any(
        (o.val_accuracy >= r.val_accuracy and o.latency_ms <= r.latency_ms)
        and (o.val_accuracy > r.val_accuracy or o.latency_ms < r.latency_ms) for o in feasible.itertuples())}
    assert expected and set(df[df["pareto"]]["trial"]) == expected
    assert "Pareto front:" in text

    client = MlflowClient(default_tracking_uri(tmp_path / "runs"))
    exp = client.get_experiment_by_name("front")
    runs = client.search_runs([exp.experiment_id], "tags.`nas.pareto` = 'true'")
    assert {int(r.data.tags["nas.trial"]) for r in runs} == expected

    study = optuna.load_study(study_name="front", storage=f"sqlite:///{tmp_path / 'runs' / 'front' / 'study.db'}")
    t = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert set(t.constraints) == {"size_kb", "params"}  # the samplers see them

    src = choose(tmp_path / "runs" / "front", None)
    assert src.trial == int(feasible.sort_values("val_accuracy", ascending=False).iloc[0]["trial"])
    assert src.chosen.startswith("export.select: the highest val_accuracy")
    best = json.loads((tmp_path / "runs" / "front" / "best" / "trial.json").read_text())
    assert best["metrics"]["size_kb"] <= size  # best/ holds the best trial that meets the constraints
    assert best["trial"] == src.trial


def test_export_select_on_a_metric_the_search_does_not_measure_is_refused() -> None:
    message = spec_error("export:\n  select:\n    maximize: val_accuracy\n    where: {latency_ms: '<= 1.0'}\n")
    assert "x.yaml:7: export.select.where.latency_ms: latency_ms is not measured in this search" in message
    message = spec_error("export:\n  select: {minimize: size_kb}\n")
    assert "x.yaml:5: export.select.minimize: size_kb is not measured in this search" in message
    ok = parse_spec(BASE + "search:\n  constraints: {latency_ms: '<= 1'}\nexport:\n  select: {minimize: size_kb}\n")
    assert isinstance(ok.export.select, SelectRule)  # int8 artifacts give size and int8 accuracy alongside


@pytest.mark.slow
def test_a_model_that_cannot_be_measured_is_pruned_with_the_reason_and_never_becomes_best(
        tmp_path: Path, tiny_spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.deployed
    from rich.console import Console

    from nas.search import SearchOptions, run

    def unconvertible(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise RuntimeError("ConverterError: op FlexFoo is neither a custom op nor a flex op")

    monkeypatch.setattr(nas.deployed, "measure", unconvertible)
    spec = tiny_spec(name="unmeasured", epochs=1, trials=2, extra="""\
      objectives: [val_accuracy, size_kb]
      isolate_trials: false
    tracking: {enabled: false}
    report: false
    """)
    with pytest.raises(NasError, match="no trial finished"):
        run(spec, SearchOptions(runs_dir=tmp_path / "runs"), Console(file=io.StringIO(), width=200))
    df = pd.read_csv(tmp_path / "runs" / "unmeasured" / "leaderboard.csv")
    assert list(df["state"]) == ["pruned", "pruned"]
    assert df["reason"].str.startswith("cannot be measured as a TFLite model: RuntimeError: ConverterError").all()
    assert not (tmp_path / "runs" / "unmeasured" / "best" / "model.keras").exists()
    assert not list((tmp_path / "runs" / "unmeasured" / ".pending").glob("*.keras"))


def test_the_leaderboard_ranks_feasible_trials_first() -> None:
    df = board()
    assert list(df["trial"]) == [0, 1, 3, 2, 4, 5]  # 4 is the most accurate, but breaks a constraint
