"""Benchmarks for the search spine (not tests; numbers go in the issue notes).

1. Per-trial overhead: one trial through nas (TrialObjective -> worker process -> MLflow child run, best model
   saved) against a plain `model.fit` of the same model, data pipeline, schedule, seed and epochs, built with
   nas's own functions (so the comparison stays fair as they change). Goal: <= 1.05x. The runs alternate (nas,
   plain, plain, nas, ...) so that drift and other load on the machine hit both alike; medians and spreads are
   reported. `--profile` adds where nas's extra time goes, in ms per trial.
2. Memory: RSS after 5 vs 50 trials in one search process (parent + live worker). Goal: <= 1.10x.

    .venv/bin/python bench/trial_overhead.py --data digits --epochs 10 --repeats 10 --skip memory [--profile]
    .venv/bin/python bench/trial_overhead.py [--data idx:data/fashion-mnist] [--epochs 2] [--trials 50]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

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


def setup(source: str, epochs: int, workdir: Path, inline: bool, max_tasks: int = 10):
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
    tracker.start_search(run_name="bench", spec_path=spec_path, spec_hash=loaded.hash, resume_run_id=None,
                         params={}, tags={})
    runner = (InlineRunner(splits) if inline else
              ProcessRunner(splits, max_tasks=max_tasks, log_path=str(workdir / "worker.log")))
    objective = TrialObjective(space=SearchSpace(loaded.spec), data=info, runner=runner, tracker=tracker,
                               reporter=PlainReporter(open(os.devnull, "w")), run=run,
                               objectives=loaded.spec.search.objectives, seed=0)
    return loaded, splits, info, objective, runner, tracker


def plain_fit(loaded, splits, info, epochs: int, seed: int) -> float:
    """The baseline: what a user would write by hand with the same model, augmentation, batches, schedule, seed
    and epochs, from nas's own building blocks (as nas.train.run_trial uses them). The session is cleared outside
    the timing, as a hand-written loop might skip it."""
    import keras
    from nas.augment import Augmentation, for_training
    from nas.builder import build_model
    from nas.data.pipeline import eval_dataset, train_batches
    from nas.space import SearchSpace
    from nas.train import compile_for_training

    cand = SearchSpace(loaded.spec).decode({}, info)
    arch, cfg = cand.arch, cand.train
    keras.backend.clear_session()
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_model(arch)
    trainer = for_training(model, Augmentation(**cfg.augment), pixel_max=arch.pixel_max, seed=seed)
    batches = train_batches(splits.train, num_classes=arch.num_classes, batch_size=cfg.batch_size, seed=seed)
    compile_for_training(trainer, cfg, steps_per_epoch=batches.steps_per_epoch, epochs=epochs)
    val = eval_dataset(splits.val, num_classes=arch.num_classes, batch_size=max(cfg.batch_size, 256))
    trainer.fit(batches.dataset, steps_per_epoch=batches.steps_per_epoch, validation_data=val, epochs=epochs,
                verbose=0, shuffle=False)
    return time.perf_counter() - t0


class Profile:
    """Wall time spent in wrapped callables, per name: where a nas trial's extra time goes."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.samples[name].append(time.perf_counter() - t0)

        setattr(owner, attr, timed)

    def add(self, name: str, seconds: float) -> None:
        self.samples[name].append(seconds)


def instrument(objective: Any, runner: Any, tracker: Any, prof: Profile) -> None:
    import nas.objective

    for attr in ("start_trial", "log_epoch", "end_trial"):
        prof.wrap(tracker, attr, f"mlflow {attr}")
    for attr in ("trial_started", "epoch", "trial_finished"):
        prof.wrap(objective.reporter, attr, f"reporter {attr}")
    prof.wrap(nas.objective, "promote_best", "promote_best (best/ swap)")
    prof.wrap(objective.space, "decode", "space.decode")
    prof.wrap(nas.objective, "plan", "arch plan (shape, params, FLOPs)")
    run = runner.run

    def timed_run(task: Any, on_epoch: Any) -> Any:
        hook = [0.0]

        def timed_hook(epoch: int, metrics: dict[str, float]) -> str:
            t = time.perf_counter()
            try:
                return on_epoch(epoch, metrics)
            finally:
                hook[0] += time.perf_counter() - t

        t0 = time.perf_counter()
        result = run(task, timed_hook)
        total = time.perf_counter() - t0
        worker = result.metrics.get("wall_time_s", 0.0)
        prof.add("runner.run: the worker's run_trial (its wall_time_s; epoch round trips included)", worker)
        prof.add("runner.run: epoch round trips, the parent's side (MLflow, reporter, pruner)", hook[0])
        prof.add("runner.run outside run_trial (task and result through the pipe, session clearing)",
                 total - worker)
        prof.add("saved a model", 1.0 if result.model_path else 0.0)
        return result

    runner.run = timed_run


def spread(xs: list[float], unit: str = "s") -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return (f"median {statistics.median(xs):6.2f}{unit}  IQR {q[0]:.2f}-{q[2]:.2f}  min {min(xs):.2f}  "
            f"max {max(xs):.2f}")


def overhead(source: str, epochs: int, repeats: int, profile: bool, max_tasks: int) -> None:
    from nas.tf_setup import prepare_tensorflow
    from nas.trial import trial_seed

    prepare_tensorflow(True)
    prof = Profile()
    with tempfile.TemporaryDirectory() as tmp:
        loaded, splits, info, objective, runner, tracker = setup(source, epochs, Path(tmp), inline=False,
                                                                  max_tasks=max_tasks)
        objective(0, {}, epochs=epochs)  # warm the worker (TF import, first graph) outside the timing
        plain_fit(loaded, splits, info, epochs, trial_seed(0, 0))  # and this process
        if profile:
            instrument(objective, runner, tracker, prof)

        def run_nas(number: int) -> float:
            t0 = time.perf_counter()
            objective(number, {}, epochs=epochs)
            # A worker retired by this trial is replaced before the next trial of a real search starts, on its
            # clock: here too, rather than in the background of the plain fit that comes next.
            t1 = time.perf_counter()
            runner._ensure()
            if profile:
                prof.add("worker replacement (retired worker's exit, successor's start-up)", time.perf_counter() - t1)
            return time.perf_counter() - t0

        def run_plain(number: int) -> float:  # the trial's seed: the same model, batches and augmentation
            return plain_fit(loaded, splits, info, epochs, trial_seed(0, number))

        nas_t, plain_t, ratios = [], [], []
        for i in range(repeats):
            if i % 2 == 0:
                n = run_nas(i + 1)
                p = run_plain(i + 1)
            else:
                p = run_plain(i + 1)
                n = run_nas(i + 1)
            nas_t.append(n)
            plain_t.append(p)
            ratios.append(n / p)
        runner.close()
        tracker.end_search("FINISHED")
    n, p = statistics.median(nas_t), statistics.median(plain_t)
    print(f"overhead  data={source} epochs={epochs} repeats={repeats} (alternating order; worker replaced "
          f"every {max_tasks} trials)")
    print(f"  plain model.fit   {spread(plain_t)}")
    print(f"  nas trial         {spread(nas_t)}")
    print(f"  ratio of medians  {n / p:.3f}  (goal <= 1.05)")
    print(f"  ratio of means    {statistics.mean(nas_t) / statistics.mean(plain_t):.3f}  (with the worker "
          f"replacements: one per {max_tasks} trials)")
    print(f"  pairwise ratios   {spread(ratios, unit='')}  (each nas trial / the plain fit next to it)")
    print(f"  extra per trial   {1000 * (n - p):.0f} ms (median nas - median plain)")
    if profile:
        saved = prof.samples.pop("saved a model")
        print(f"  where nas's time goes: ms per trial (mean of {repeats} trials), and ms per call (median, max)")
        for name, xs in sorted(prof.samples.items(), key=lambda kv: -sum(kv[1])):
            print(f"    {1000 * sum(xs) / repeats:8.1f}  per call {1000 * statistics.median(xs):7.1f} "
                  f"{1000 * max(xs):7.1f}  x{len(xs) / repeats:<4g} {name}")
        print(f"    trials that saved a model: {sum(saved):.0f} of {repeats}")


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
    ap.add_argument("--max-tasks", type=int, default=10, help="trials per worker process (search.worker_max_trials)")
    ap.add_argument("--profile", action="store_true", help="also show where nas's extra time per trial goes")
    ap.add_argument("--skip", choices=["overhead", "memory"], action="append", default=[])
    args = ap.parse_args()
    if "overhead" not in args.skip:
        overhead(args.data, args.epochs, args.repeats, args.profile, args.max_tasks)
    if "memory" not in args.skip:
        memory(args.trials, inline=False)
        memory(args.trials, inline=True)
