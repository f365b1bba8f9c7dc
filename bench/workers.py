"""Parallel search on one machine (bench, not a test; numbers go in the issue note).

1. The same 16 digits trials (sampler random, pruner none, fixed epochs) through `nas search` with 1 and 2
   workers: wall time, trials per hour, epochs trained; with 2 workers once with the CPU-thread split (each
   worker cores // 2 threads, the default) and once without (NAS_WORKER_THREADS=0: each uses every core); each
   on the run dir's SQLite study and on a PostgreSQL server.
2. The per-trial cost of the study storage alone: a trivial objective that stores what a nas trial stores
   (params, an intermediate value per epoch, the user attrs) on SQLite and on PostgreSQL, ms per trial.

    .venv/bin/python bench/workers.py [--trials 16] [--epochs 10] [--repeats 2] [--skip search|storage]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = """name: workers
data: {{source: digits, validation_fraction: 0.2}}
augment: {{translation: 0.05}}
space:
  depth: {{low: 1, high: 3}}
  filters: [16, 32, 48]
  kernel_size: [3, 5]
  pooling: [max, none]
  head: {{type: gap, depth: 0}}
train: {{epochs: {epochs}, batch_size: 64, learning_rate: {{low: 1e-3, high: 1e-2, log: true}}}}
search: {{sampler: random, pruner: none, trials: {trials}, seed: 0}}
"""


def run_search(spec: Path, workdir: Path, workers: int, storage: str | None, split: bool) -> dict[str, float]:
    env = {**os.environ, "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}
    if not split:
        env["NAS_WORKER_THREADS"] = "0"
    argv = [sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(workdir / "runs"),
            "--workers", str(workers)] + (["--storage", storage] if storage else [])
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r.stdout}\n{r.stderr}")
    import pandas as pd

    board = pd.read_csv(workdir / "runs" / "workers" / "leaderboard.csv")
    searched = float(re.search(r"search complete in (\d+)s", r.stdout).group(1))  # type: ignore[union-attr]
    return {"wall_s": wall, "search_s": searched, "trials": float(len(board)),
            "epochs": float(board["epochs_run"].sum()), "best_val": float(board["val_accuracy"].max())}


def bench_search(trials: int, epochs: int, repeats: int) -> None:
    from tests.servers import Postgres, pg_tool

    pg = Postgres()
    rows = []
    try:
        variants = [("sqlite", 1, True), ("sqlite", 2, True), ("sqlite", 2, False),
                    ("postgresql", 1, True), ("postgresql", 2, True)]
        # a warm-up run first (the first process to import TensorFlow reads it from disk), then every variant
        # `repeats` times in rotation, so that drift hits them alike
        order = [("sqlite", 1, True)] + variants * repeats
        for i, (store, workers, split) in enumerate(order):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                spec = work / "workers.yaml"
                spec.write_text(SPEC.format(trials=trials, epochs=epochs))
                storage = None
                if store == "postgresql":
                    db = f"w{i}"
                    subprocess.run([*pg.as_user, pg_tool("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U",
                                    "postgres", db], check=True, capture_output=True)
                    storage = pg.url.rsplit("/", 1)[0] + f"/{db}"
                m = run_search(spec, work, workers, storage, split)
            label = f"{store:<10} workers {workers}" + ("" if workers == 1 else
                                                      (" threads split" if split else " no split"))
            if i == 0:
                label = "(warm-up) " + label
            rows.append((label, m))
            print(f"{label:<38} search {m['search_s']:5.0f} s (process {m['wall_s']:5.0f} s)  "
                  f"{3600 * m['trials'] / m['search_s']:6.0f} trials/h  {m['epochs']:.0f} epochs  "
                  f"best val {m['best_val']:.4f}", flush=True)
    finally:
        pg.close()


def bench_storage(n: int = 40, epochs: int = 10) -> None:
    import optuna
    from nas.backends.storage import make_storage
    from tests.servers import Postgres

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("depth", 1, 3)
        trial.suggest_categorical("pool", ["max", "none"])
        for step in range(1, epochs + 1):
            trial.report(x * step, step)
            trial.should_prune()
        for key in ("params", "flops", "epochs_run", "wall_time_s", "val_accuracy", "val_loss", "nas.state"):
            trial.set_user_attr(key, 1.0)
        return x

    pg = Postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url in (("sqlite (run dir)", f"sqlite:///{tmp}/s.db"), ("postgresql", pg.url)):
                study = optuna.create_study(storage=make_storage(url), study_name="s", direction="maximize",
                                            pruner=optuna.pruners.MedianPruner())
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    study.optimize(objective, n_trials=1)
                    times.append(time.perf_counter() - t0)
                print(f"storage {name:<18} {1000 * statistics.median(times):6.1f} ms per trial (median of {n}; "
                      f"{epochs} reports, 3 params, 7 attrs)", flush=True)
    finally:
        pg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip", choices=["search", "storage"])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; nas search on digits, {args.trials} trials x {args.epochs} epochs")
    if args.skip != "storage":
        bench_storage()
    if args.skip != "search":
        bench_search(args.trials, args.epochs, args.repeats)


if __name__ == "__main__":
    main()
