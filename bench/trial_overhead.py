"""Benchmarks for the search spine (not tests; numbers go in the issue notes).

1. Per-trial overhead: one trial through nas (TrialObjective -> worker process -> MLflow child run, model
   saved) against a plain `model.fit` of the same model, data pipeline and epochs. Goal: <= 1.05x.
2. Memory: RSS after 5 vs 50 trials in one search process (parent + live worker). Goal: <= 1.10x.

    .venv/bin/python bench/trial_overhead.py [--data idx:data/fashion-mnist] [--epochs 2] [--trials 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = """name: bench
data: {{source: "{source}", validation_fraction: 0.1}}
augment: {{translation: 0.05}}
space:
  depth: 3
  filters: {{base: 32, growth: 2.0}}
  pooling: max
  head: {{type: gap, depth: 1, width: 64}}
train: {{epochs: {epochs}, batch_size: 128, learning_rate: 1e-3}}
search: {{pruner: none, seed: 0}}
tracking: {{enabled: true}}
"""


def rss_tree(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def setup(source: str, epochs: int, workdir: Path, inline: bool):
    from nas.data_info import load_splits
    from nas.objective import TrialObjective
    from nas.progress import PlainReporter
    from nas.rundir import prepare
    from nas.space import SearchSpace
    from nas.spec import load_spec
    from nas.tracking import MlflowTracker, default_artifact_root, default_tracking_uri
    from nas.worker import InlineRunner, ProcessRunner

    spec_path = workdir / "bench.yaml"
    spec_path.write_text(SPEC.format(source=source, epochs=epochs))
    loaded = load_spec(spec_path)
    splits, info, _ = load_splits(loaded)
    run, _ = prepare(workdir / "runs", loaded, new=True)
    tracker = MlflowTracker(default_tracking_uri(workdir / "runs"), "bench", default_artifact_root(workdir / "runs"))
    tracker.start_search(run_name="bench", spec_path=spec_path, spec_hash=loaded.hash, resume_run_id=None, params={}, tags={})
    runner = InlineRunner(splits) if inline else ProcessRunner(splits, max_tasks=10, log_path=str(workdir / "worker.log"))
    objective = TrialObjective(space=SearchSpace(loaded.spec), data=info, runner=runner, tracker=tracker,
                               reporter=PlainReporter(open(os.devnull, "w")), run=run,
                               objectives=loaded.spec.search.objectives, seed=0)
    return loaded, splits, info, objective, runner, tracker


def plain_fit(loaded, splits, info, epochs: int) -> float:
    """The baseline: what a user would write by hand with the same model, pipeline and epochs."""
    import keras

    from nas.data.pipeline import Augmentation, eval_dataset, train_dataset
    from nas.space import SearchSpace
    from nas.train import make_optimizer
    from nas.builder import build_model

    cand = SearchSpace(loaded.spec).decode({}, info)
    keras.backend.clear_session()
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build_model(cand.arch)
    model.compile(optimizer=make_optimizer(cand.train), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    train = train_dataset(splits.train, num_classes=info.num_classes, batch_size=cand.train.batch_size,
                          augmentation=Augmentation(**cand.train.augment), pixel_max=info.pixel_max, seed=0)
    val = eval_dataset(splits.val, num_classes=info.num_classes, batch_size=256)
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, shuffle=False)
    return time.perf_counter() - t0


def overhead(source: str, epochs: int, repeats: int) -> None:
    from nas.tf_setup import prepare_tensorflow

    prepare_tensorflow(True)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, splits, info, objective, runner, tracker = setup(source, epochs, Path(tmp), inline=False)
        objective(0, {}, epochs=epochs)  # warm the worker (TF import, first graph) outside the timing
        plain_fit(loaded, splits, info, epochs)  # and this process
        nas_t, plain_t = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            objective(i + 1, {}, epochs=epochs)
            nas_t.append(time.perf_counter() - t0)
            plain_t.append(plain_fit(loaded, splits, info, epochs))
        runner.close()
        tracker.end_search("FINISHED")
    n, p = statistics.median(nas_t), statistics.median(plain_t)
    print(f"overhead  data={source} epochs={epochs} repeats={repeats}")
    print(f"  plain model.fit   median {p:7.2f}s  all {[round(x, 2) for x in plain_t]}")
    print(f"  nas trial         median {n:7.2f}s  all {[round(x, 2) for x in nas_t]}")
    print(f"  ratio nas/plain   {n / p:.3f}  (goal <= 1.05)")


def memory(trials: int, inline: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, _, _, objective, runner, tracker = setup("digits", 1, Path(tmp), inline=inline)
        marks = {}
        for i in range(trials):
            objective(i, {}, epochs=1)
            if i + 1 in (5, trials):
                marks[i + 1] = rss_tree(os.getpid())
        runner.close()
        tracker.end_search("FINISHED")
    mode = "inline" if inline else "worker process"
    a, b = marks[5], marks[trials]
    print(f"memory ({mode}) digits, 1-epoch trials: RSS after 5 trials {a / 2**20:.0f} MiB, "
          f"after {trials} {b / 2**20:.0f} MiB, ratio {b / a:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="idx:" + str(REPO / "data" / "fashion-mnist")
                    if (REPO / "data" / "fashion-mnist").exists() else "digits")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--skip", choices=["overhead", "memory"], action="append", default=[])
    args = ap.parse_args()
    if "overhead" not in args.skip:
        overhead(args.data, args.epochs, args.repeats)
    if "memory" not in args.skip:
        memory(args.trials, inline=False)
        memory(args.trials, inline=True)
