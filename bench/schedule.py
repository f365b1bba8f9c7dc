"""Which `train.schedule` should be the default for short trials? (a benchmark, not a test)

Trains a few fixed small CNNs through nas's own trial path (spec text -> SearchSpace.decode -> run_trial, best
epoch's weights saved -> evaluate_model on the held-out test split) with each schedule, for short budgets,
on the same seeds, and prints the mean held-out accuracy per (data, model, epochs, schedule).

    .venv/bin/python bench/schedule.py                       # digits, and a Fashion-MNIST subset if data/ has it
    .venv/bin/python bench/schedule.py --no-fashion --seeds 2

Data: digits (bundled with scikit-learn); Fashion-MNIST from data/fashion-mnist (`make data`), a class-mixed
random subset of 6,000 training, 2,000 validation and 2,000 test images (the test images from its own test
set). 661 s on 2 CPU cores shared with other jobs (load ~5.5); --lr 1e-2 --seeds 2 --no-fashion: 160 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEDULES = ("constant", "cosine", "one_cycle")

# Fixed small CNNs; Adam at the spec's default learning rate (1e-3, or --lr), each schedule at its default warm-up.
MODELS = {
    "cnn-bn": "{depth: 2, filters: {base: 16, growth: 2}, batch_norm: true, head: {type: gap, depth: 1, width: 64}}",
    "cnn-plain": "{depth: 2, filters: {base: 8, growth: 2}, batch_norm: false, head: {type: flatten, depth: 0}}",
}
SPEC = """name: bench
data: {{source: digits}}
space: {model}
train: {{epochs: {epochs}, schedule: {schedule}, batch_size: {batch}, learning_rate: {lr}}}
"""


def load(which: str) -> tuple[Any, Any]:
    from nas.data import load_source, make_splits
    from nas.data.splits import Split, Splits
    from nas.space import DataInfo

    if which == "digits":
        raw = load_source("digits", REPO)
        splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    else:
        raw = load_source("idx:data/fashion-mnist", REPO)
        full = make_splits(raw, validation_fraction=0.1, test_fraction=0.2, seed=0)
        rng = np.random.default_rng(0)

        def take(s: Split, n: int) -> Split:
            i = rng.permutation(len(s.y))[:n]
            return Split(s.x[i], s.y[i])

        splits = Splits(take(full.train, 6000), take(full.val, 2000), take(full.test, 2000), full.class_names,
                        full.pixel_max)
    return splits, DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)


def one(splits: Any, info: Any, model: str, epochs: int, schedule: str, seed: int, batch: int, tmp: Path,
        lr: float = 1e-3) -> float:
    from nas.space import SearchSpace
    from nas.spec import parse_spec
    from nas.train import evaluate_model, run_trial
    from nas.trial import TrialState, TrialTask

    spec = parse_spec(SPEC.format(model=MODELS[model], epochs=epochs, schedule=schedule, batch=batch, lr=lr))
    cand = SearchSpace(spec).decode({}, info)
    path = tmp / f"{model}-{epochs}-{schedule}-{seed}.keras"
    res = run_trial(TrialTask(0, cand, seed=seed, epochs=epochs, save_model_to=str(path)), splits,
                    lambda n, m: "continue")
    if res.state != TrialState.FINISHED or not res.model_path:
        return float("nan")
    return evaluate_model(res.model_path, splits, ("test",))["test_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-fashion", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: the spec's default, 1e-3)")
    args = ap.parse_args()

    from nas.tf_setup import prepare_tensorflow

    prepare_tensorflow(deterministic=True)
    plan: list[tuple[str, str, tuple[int, ...], int, int]] = [  # data, model, budgets, seeds, batch
        ("digits", m, (3, 6, 12), args.seeds, 64) for m in MODELS]
    if not args.no_fashion and (REPO / "data/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        plan.append(("fashion-6k", "cnn-bn", (3, 6), min(args.seeds, 2), 128))
    started = time.perf_counter()
    rows: list[tuple[str, str, int, dict[str, list[float]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for data, model, budgets, seeds, batch in plan:
            splits, info = load("digits" if data == "digits" else "fashion")
            for epochs in budgets:
                accs: dict[str, list[float]] = {s: [] for s in SCHEDULES}
                for schedule in SCHEDULES:
                    for seed in range(seeds):
                        accs[schedule].append(one(splits, info, model, epochs, schedule, seed, batch, Path(tmp),
                                                  args.lr))
                rows.append((data, model, epochs, accs))
                cells = "  ".join(f"{s} {statistics.mean(a):.4f}" for s, a in accs.items())
                print(f"{data:10s} {model:9s} {epochs:2d} ep  {cells}   ({time.perf_counter() - started:.0f}s)",
                      flush=True)
    print(f"\nheld-out test accuracy, mean over seeds (best epoch's weights, as nas keeps them); "
          f"Adam, lr {args.lr:g}\n")
    print(f"| data | model | epochs | seeds | {' | '.join(SCHEDULES)} |")
    print("|---|---|---|---|" + "---|" * len(SCHEDULES))
    wins = dict.fromkeys(SCHEDULES, 0)
    for data, model, epochs, accs in rows:
        means = {s: statistics.mean(a) for s, a in accs.items()}
        best = max(means.values())
        wins[max(means, key=lambda s: means[s])] += 1
        cells = " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in means.values())
        print(f"| {data} | {model} | {epochs} | {len(next(iter(accs.values())))} | {cells} |")
    overall = {s: statistics.mean(statistics.mean(a[s]) for *_, a in rows) for s in SCHEDULES}
    print("| **mean of rows** | | | | " + " | ".join(f"{overall[s]:.4f}" for s in SCHEDULES) + " |")
    print(f"\nrows won: {wins}; total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
