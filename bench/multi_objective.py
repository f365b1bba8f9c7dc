"""Multi-objective search on Fashion-MNIST at a fixed budget (bench, not a test; numbers go in the issue note).

1. Pruning with two objectives: (val_accuracy, latency_ms) with `pruner: pareto` against `pruner: none`, the
   same budget, sampler and seed. Reported: the hypervolume of each search's front (1 - val_accuracy and
   latency_ms, both minimized, against one reference point for both runs: accuracy 0 and 1.1 x the slowest
   latency seen), total epochs trained, trials finished and pruned, and what measuring cost per trial.
2. Quantization-aware selection: one search on `int8_val_accuracy`, one on float `val_accuracy`; each winner is
   exported (retrained on train+val, no weight pruning, TFLite int8) and its int8 test accuracy reported.

Needs the data: `make data`. Runs one search at a time; give it a quiet machine.

    .venv/bin/python bench/multi_objective.py [--budget 8m] [--skip pruning|int8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "fashion-mnist"

SPEC = """name: {name}
data: {{source: "idx:{data}", validation_fraction: 0.1}}
augment: {{flip: horizontal, translation: 0.05}}
space:
  depth: {{low: 1, high: 3}}
  filters: {{base: [8, 16, 32], growth: [1.5, 2.0]}}
  kernel_size: [3, 5]
  pooling: [max, avg]
  dropout: [0.0, 0.2]
  head: {{type: [gap, flatten], depth: 0}}
train: {{epochs: 6, batch_size: 128, learning_rate: {{low: 1e-3, high: 1e-2, log: true}}}}
search:
  sampler: tpe
  pruner: {pruner}
  trials: 500
  budget: {budget}
  rung_data: full
  seed: 0
  startup_trials: 3
  warmup_epochs: 1
  objectives: {objectives}
tracking: {{enabled: false}}
report: false
export: {{retrain_epochs: 6, sparsity: 0.0, formats: [keras, tflite-int8], registry: null}}
"""


def nas(*args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nas {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def search(tmp: Path, name: str, objectives: str, pruner: str, budget: str) -> tuple[pd.DataFrame, float]:
    """One search (reused when `tmp` already holds it: --out keeps runs for a second look)."""
    board, timing = tmp / "runs" / name / "leaderboard.csv", tmp / f"{name}.wall"
    if not (board.exists() and timing.exists()):
        spec = tmp / f"{name}.yaml"
        spec.write_text(SPEC.format(name=name, data=DATA, objectives=objectives, pruner=pruner, budget=budget))
        timing.write_text(str(nas("search", str(spec), "--runs-dir", str(tmp / "runs"))))
    return pd.read_csv(board), float(timing.read_text())


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates minimized) and bounded by `ref`."""
    inside = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in inside:  # by x ascending: each point adds the strip below the lowest y so far
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def markdown(rows: list[dict[str, object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(r[h]) for h in heads) + " |" for r in rows]
    return "\n".join(lines)


def pruning(tmp: Path, budget: str) -> None:
    rows, boards = [], {}
    for pruner in ("pareto", "none"):
        df, wall = search(tmp, f"mo_{pruner}", "[val_accuracy, latency_ms]", pruner, budget)
        boards[pruner] = (df, wall)
    slowest = max(float(df["latency_ms"].max()) for df, _ in boards.values())
    ref = (1.0, 1.1 * slowest)
    for pruner, (df, wall) in boards.items():
        done = df[df["state"] == "finished"]
        pts = [(1 - a, lat) for a, lat in zip(done["val_accuracy"], done["latency_ms"], strict=True)]
        share = (done["measure_s"] / done["wall_time_s"]).median() if len(done) else math.nan
        rows.append({"pruner": pruner, "hypervolume": hypervolume(pts, ref), "front": int(df["pareto"].sum()),
                     "finished": len(done), "pruned": int((df["state"] == "pruned").sum()),
                     "epochs trained": int(df["epochs_run"].fillna(0).sum()),
                     "best val_acc": float(done["val_accuracy"].max()),
                     "fastest ms": float(done["latency_ms"].min()),
                     "measure s (median)": float(done["measure_s"].median()),
                     "measure / training (median)": float(share), "wall s": round(wall)})
    print(f"\n(1) two objectives, budget {budget} each; hypervolume reference (1 - acc, ms) = "
          f"({ref[0]:.2f}, {ref[1]:.4f})\n")
    print(markdown(rows))


def int8(tmp: Path, budget: str) -> None:
    rows = []
    for objective in ("int8_val_accuracy", "val_accuracy"):
        name = f"q_{objective}"
        df, wall = search(tmp, name, f"[{objective}]", "median", budget)
        done = df[df["state"] == "finished"]
        if not (tmp / "runs" / name / "export" / "manifest.json").exists():
            nas("export", str(tmp / "runs" / name))
        manifest = json.loads((tmp / "runs" / name / "export" / "manifest.json").read_text())
        art = manifest["artifacts"]
        rows.append({"searched on": objective, "trials finished": len(done), "winner": manifest["source"]["trial"],
                     "winner val_acc (search)": float(done.iloc[0]["val_accuracy"]),
                     "winner int8 val_acc (search)": float(done.iloc[0].get("int8_val_accuracy", math.nan)),
                     "export keras test acc": art["keras"]["test_accuracy"],
                     "export int8 test acc": art["tflite-int8"]["test_accuracy"], "wall s": round(wall)})
    print(f"\n(2) one objective, budget {budget} each; winners exported (retrained on train+val, int8)\n")
    print(markdown(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="8m")
    ap.add_argument("--skip", choices=["pruning", "int8"], action="append", default=[])
    ap.add_argument("--out", type=Path, help="keep the runs here (a rerun with the same --out reuses them)")
    args = ap.parse_args()
    if not (DATA / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"no Fashion-MNIST in {DATA}; run `make data` first")
    out = args.out or Path(tempfile.mkdtemp(prefix="nas-bench-mo-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"runs in {out}")
    if "pruning" not in args.skip:
        pruning(out, args.budget)
    if "int8" not in args.skip:
        int8(out, args.budget)


if __name__ == "__main__":
    main()
