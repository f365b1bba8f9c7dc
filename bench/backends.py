"""KerasTuner Hyperband against Optuna TPE + Hyperband pruner on the same spec (a benchmark, not a test).

1. Search, equal budgets. For each dataset one spec, identical except `search:`:
     keras-tuner   algorithm hyperband, hyperband {max_epochs: E, factor: 3}
     optuna        sampler tpe, pruner hyperband (1 .. E epochs, reduction factor 3), train.epochs E,
                   trials = the number of trials that Hyperband iteration plans
   Equal budget: the same number of trials and the same per-trial epoch cap. Each search runs as
   `nas search` in a fresh process; wall time is the whole command (imports, data, training, final test
   evaluation). Reported: trials finished/pruned/failed, epochs trained (sum of epochs_run), best
   validation accuracy and that model's held-out test accuracy (best/metrics.json).
2. Per-trial overhead. The objective, worker process and MLflow tracking of `nas search`, driven by each
   backend's loop for N trials of one fixed architecture (only learning rate and label smoothing vary),
   against a plain `model.fit` of the same model, data pipeline and epochs (median of 3, same machine).

    .venv/bin/python bench/backends.py [--skip fashion] [--skip overhead] [--overhead-trials 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FASHION = REPO / "data" / "fashion-mnist"

# Fashion-MNIST: a lighter space than search_spaces/fashion_mnist.yaml, so that both searches fit in minutes
# on 2 CPU cores (full 54k/6k/10k data).
FASHION_SPEC = f"""name: bench_fashion
data: {{source: "idx:{FASHION}", validation_fraction: 0.1}}
augment: {{flip: horizontal, translation: 0.05, fill_mode: constant}}
space:
  depth: {{low: 2, high: 3}}
  filters: {{base: [16, 32], growth: [1.5, 2.0]}}
  kernel_size: 3
  pooling: [max, avg]
  dropout: {{low: 0.0, high: 0.3}}
  activation: [relu, swish]
  batch_norm: true
  head: {{type: [gap, flatten], depth: [0, 1], width: [64, 128], dropout: 0.2}}
  max_params: 300000
train:
  epochs: 3
  learning_rate: {{low: 3e-4, high: 1e-2, log: true}}
  batch_size: 128
  label_smoothing: [0.0, 0.1]
"""

OVERHEAD_SPEC = """name: bench_overhead_{backend}
data: {{source: "{source}", validation_fraction: 0.1}}
augment: {{translation: 0.05}}
space:
  depth: 3
  filters: {{base: 32, growth: 2.0}}
  pooling: max
  head: {{type: gap, depth: 1, width: 64}}
train:
  epochs: {epochs}
  batch_size: 128
  learning_rate: {{low: 5e-4, high: 2e-3, log: true}}
  label_smoothing: [0.0, 0.1]
"""

OVERHEAD_SEARCH = {
    "optuna tpe": {"sampler": "tpe", "pruner": "none", "startup_trials": 1},
    "keras-tuner random": {"backend": "keras-tuner", "algorithm": "random"},
    "keras-tuner bayesian": {"backend": "keras-tuner", "algorithm": "bayesian", "startup_trials": 1},
}


def planned_trials(max_epochs: int, factor: int) -> int:
    from nas.backends.keras_tuner_backend import hyperband_plan

    return sum(n for _, _, n, _ in hyperband_plan(max_epochs, factor))


def search_specs(base: dict[str, Any], max_epochs: int, factor: int, seed: int) -> dict[str, dict[str, Any]]:
    """The two specs of one comparison: `base` with only `search:` (and train.epochs = the cap) set."""
    base = {k: v for k, v in base.items() if k not in ("search", "export")}
    base["train"] = {**base.get("train", {}), "epochs": max_epochs}
    base["tracking"] = {"enabled": True}
    kt = {"backend": "keras-tuner", "algorithm": "hyperband", "hyperband": {"max_epochs": max_epochs, "factor": factor},
          "seed": seed}
    op = {"sampler": "tpe", "pruner": "hyperband", "trials": planned_trials(max_epochs, factor), "seed": seed,
          "startup_trials": 5, "warmup_epochs": 1}
    return {"keras-tuner hyperband": {**base, "search": kt}, "optuna tpe+hyperband": {**base, "search": op}}


def run_search(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import pandas as pd

    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "COLUMNS": "200"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nas", "search", str(path), "--runs-dir", str(workdir / "runs")],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"nas search {path} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    run = workdir / "runs" / spec["name"]
    df = pd.read_csv(run / "leaderboard.csv")
    best = json.loads((run / "best" / "metrics.json").read_text())
    states = df["state"].value_counts().to_dict()
    top = df[df["trial"] == best["trial"]].iloc[0]
    params = {k.removeprefix("param."): getattr(v, "item", lambda: v)() for k, v in top.items()
              if k.startswith("param.") and v == v}  # numpy scalars -> plain values; NaN (unused dims) left out
    return {"trials": len(df), "finished": states.get("finished", 0), "pruned": states.get("pruned", 0),
            "failed": states.get("failed", 0), "epochs": int(df["epochs_run"].fillna(0).sum()),
            "train_s": float(df["wall_time_s"].fillna(0).sum()), "wall_s": wall,
            "val": best["val_accuracy"], "test": best["test_accuracy"], "best_trial": int(best["trial"]),
            "best_epochs": int(top["epochs_run"]), "best_params": params}


def compare(name: str, base: dict[str, Any], max_epochs: int, factor: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for label, spec in search_specs(base, max_epochs, factor, seed).items():
        spec["name"] = f"bench_{name}_{label.split()[0].replace('-', '_')}"
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  {name}: {label} ...", file=sys.stderr, flush=True)
            rows.append({"data": name, "backend": label, "budget": f"{spec['search'].get('trials') or planned_trials(max_epochs, factor)} trials x <= {max_epochs} ep",
                         **run_search(spec, Path(tmp))})
    return rows


def print_search_table(rows: list[dict[str, Any]]) -> None:
    print("\n| data | backend | budget | trials fin/pruned/failed | epochs trained | training s | wall s | best val acc | its test acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['backend']} | {r['budget']} | {r['trials']} ({r['finished']}/{r['pruned']}/{r['failed']}) "
              f"| {r['epochs']} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['val']:.4f} | {r['test']:.4f} |")
    print("\nbest trials:")
    for r in rows:
        shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r["best_params"].items()
                 if not k.startswith("block.")}
        print(f"  {r['data']:14} {r['backend']:22} trial {r['best_trial']} ({r['best_epochs']} epochs): {shown}")


# -- per-trial overhead ---------------------------------------------------------------------------------

def plain_fit(space: Any, params: dict[str, Any], splits: Any, info: Any, epochs: int) -> float:
    """What a user would write by hand: the same model, data pipeline and epochs, no search around it."""
    import keras

    from nas.builder import build_model
    from nas.augment import Augmentation, for_training
    from nas.data.pipeline import eval_dataset, train_batches
    from nas.train import make_optimizer

    cand = space.decode(params, info)
    keras.backend.clear_session()
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = for_training(build_model(cand.arch), Augmentation(**cand.train.augment), pixel_max=info.pixel_max, seed=0)
    model.compile(optimizer=make_optimizer(cand.train),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cand.train.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    train = train_batches(splits.train, num_classes=info.num_classes, batch_size=cand.train.batch_size, seed=0)
    val = eval_dataset(splits.val, num_classes=info.num_classes, batch_size=256)
    model.fit(train.dataset, steps_per_epoch=train.steps_per_epoch, validation_data=val, epochs=epochs, verbose=0,
              shuffle=False)
    return time.perf_counter() - t0


def overhead(source: str, epochs: int, trials: int) -> None:
    from nas.data_info import load_splits
    from nas.leaderboard import frame, write
    from nas.objective import TrialObjective
    from nas.progress import PlainReporter
    from nas.rundir import prepare
    from nas.search import SearchOptions, open_backend
    from nas.space import SearchSpace
    from nas.spec import load_spec
    from nas.tf_setup import prepare_tensorflow
    from nas.tracking import MlflowTracker, default_artifact_root, default_tracking_uri
    from nas.worker import ProcessRunner

    prepare_tensorflow(True)
    results: dict[str, float] = {}
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, search in OVERHEAD_SEARCH.items():
            key = label.split()[0].replace("-", "_") + "_" + label.split()[1]
            text = OVERHEAD_SPEC.format(backend=key, source=source, epochs=epochs)
            spec_path = work / f"{key}.yaml"
            spec_path.write_text(text + yaml.safe_dump({"search": {**search, "trials": trials, "seed": 0}}))
            loaded = load_spec(spec_path)
            splits, info, _ = load_splits(loaded)
            space = SearchSpace(loaded.spec)
            runs = work / "runs"
            run, resuming = prepare(runs, loaded, new=True)
            backend = open_backend(loaded, space, run, SearchOptions(runs_dir=runs), resuming)
            tracker = MlflowTracker(default_tracking_uri(runs), loaded.spec.name, default_artifact_root(runs))
            tracker.start_search(run_name=key, spec_path=spec_path, spec_hash=loaded.hash, resume_run_id=None,
                                 params={}, tags={})
            runner = ProcessRunner(splits, max_tasks=10, log_path=str(work / "worker.log"))
            objective = TrialObjective(space=space, data=info, runner=runner, tracker=tracker,
                                       reporter=PlainReporter(open(os.devnull, "w")), run=run,
                                       objectives=loaded.spec.search.objectives, seed=0)
            sample = space.sample(random.Random(0))
            objective(10_000, sample, epochs=epochs)  # warm the worker (TF import, first graph) outside the timing
            if not plain:
                plain_fit(space, sample, splits, info, epochs)  # warm this process too
                plain = [plain_fit(space, sample, splits, info, epochs) for _ in range(3)]

            def save() -> None:
                write(frame(backend.rows(), loaded.spec.search.objectives), run.leaderboard)

            t0 = time.perf_counter()
            backend.run(objective, on_trial_done=save)
            results[label] = (time.perf_counter() - t0) / trials
            runner.close()
            tracker.end_search("FINISHED")
    p = statistics.median(plain)
    print(f"\nper-trial overhead: {source}, one architecture, {epochs} epoch(s), {trials} trials per backend "
          f"(search loop wall time / trials; includes sampling, worker IPC, MLflow, leaderboard, state saving)")
    print("\n| loop | s per trial | vs plain model.fit | overhead s |")
    print("|---|---|---|---|")
    print(f"| plain model.fit (median of 3: {', '.join(f'{x:.2f}' for x in plain)}) | {p:.2f} | 1.000 | 0 |")
    for label, t in results.items():
        print(f"| {label} | {t:.2f} | {t / p:.3f} | {t - p:+.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", choices=["digits", "fashion", "overhead"], action="append", default=[])
    ap.add_argument("--digits-max-epochs", type=int, default=9)
    ap.add_argument("--fashion-max-epochs", type=int, default=3)
    ap.add_argument("--factor", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overhead-data", default=f"idx:{FASHION}" if FASHION.exists() else "digits")
    ap.add_argument("--overhead-epochs", type=int, default=1)
    ap.add_argument("--overhead-trials", type=int, default=4)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    if "digits" not in args.skip:
        base = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
        rows += compare("digits", base, args.digits_max_epochs, args.factor, args.seed)
    if "fashion" not in args.skip and FASHION.exists():
        rows += compare("fashion-mnist", yaml.safe_load(FASHION_SPEC), args.fashion_max_epochs, args.factor, args.seed)
    if rows:
        print_search_table(rows)
    if "overhead" not in args.skip:
        overhead(args.overhead_data, args.overhead_epochs, args.overhead_trials)
