"""Run nas or one of its peers on Fashion-MNIST for a wall-clock budget; print and append one row to RESULTS.md.

    .venv/bin/python bench/peers/run.py nas --budget 30m
    .venv/bin/python bench/peers/run.py keras_tuner --budget 1h
    .venv/bin/python bench/peers/run.py all --budget 30m       # floor, optuna, keras_tuner, nas: one at a time
    .venv/bin/python bench/peers/run.py nas --budget 30m --set search.endgame=0.3   # a spec key changed

Tools: nas (`nas search` on a copy of search_spaces/fashion_mnist.yaml with an absolute data source and
export.after_search false), keras_tuner, optuna, floor (bench/peers/*.py). "wall used" is measured here,
around the whole process (Python start, imports, data loading, search, the one test measurement, exit);
"result ready at" is when the winner's test accuracy was known (the tool's own clock; for nas, when it wrote
best/metrics.json), which leaves out the process's exit (TensorFlow's teardown: 2-20 s seen).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from common import DATA, seconds  # noqa: E402

SCRIPTS = {"floor": "floor_convnet.py", "optuna": "optuna_keras.py", "keras_tuner": "keras_tuner_hyperband.py"}
TOOLS = [*SCRIPTS, "nas"]
HEADER = ("| date | tool | budget | wall used | result ready at | test acc | trials started / finished | epochs "
          "| load 1m | notes | command |")


def nas_command(work: Path, budget: str, overrides: list[str] = ()) -> tuple[list[str], Path]:
    spec = yaml.safe_load((REPO / "search_spaces" / "fashion_mnist.yaml").read_text())
    spec["data"]["source"] = f"idx:{DATA}"
    for item in overrides:  # --set a.b=value: the value as YAML reads it (0.3, true, [1, 2])
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    spec.setdefault("export", {})["after_search"] = False
    path = work / "fashion_mnist.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    nas = Path(sys.executable).parent / "nas"
    return [str(nas), "search", str(path), "--budget", budget, "--runs-dir", str(work / "runs")], \
        work / "runs" / spec["name"]


def nas_result(run_dir: Path, started_at: float) -> dict:
    """The winner's held-out accuracy from best/metrics.json; trials and epochs from leaderboard.csv."""
    metrics_file = run_dir / "best" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    with open(run_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def epochs(r: dict) -> float:
        return float(r["epochs_run"] or 0)

    started = [r for r in rows if epochs(r) > 0]
    configs = len(rows) - sum(bool(r.get("continues")) for r in rows)  # a continuation is not a new configuration
    cut = [r for r in started if r["state"] == "finished" and "budget" in r["reason"]]
    finished = [r for r in started if r["state"] == "finished" and r not in cut]
    pruned = sum(r["state"] == "pruned" for r in started)
    paused = sum(r["state"] == "paused" for r in started)  # pruner asha: stopped at a rung with a checkpoint
    continued = sum(r["state"] == "continued" for r in started)  # ... and later continued by another trial
    return {"wall_s": metrics_file.stat().st_mtime - started_at,  # when the winner's test accuracy was known
            "test_accuracy": round(metrics["test_accuracy"], 4), "val_accuracy": round(metrics["val_accuracy"], 4),
            "trials_started": len(started), "trials_finished": len(finished),
            "epochs": round(sum(map(epochs, started)), 1),
            "notes": f"{configs} configurations: {pruned} pruned, {paused} paused at a rung, {continued} paused and "
                     f"continued later, {len(cut)} cut by the budget, {len(rows) - len(started)} rejected before "
                     f"training; best trial {metrics['trial']}; epochs on rung subsets count whole"}


def run(tool: str, budget: str, base: Path, results: Path, overrides: list[str] = ()) -> None:
    work = base / f"{tool}-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    if tool == "nas":
        cmd, run_dir = nas_command(work, budget, overrides)
    else:
        cmd = [sys.executable, str(HERE / SCRIPTS[tool]), "--budget", budget, "--workdir", str(work),
               "--out", str(work / "result.json")]
    load = os.getloadavg()[0]
    print(f"== {tool}, budget {budget}: {shlex.join(cmd)}  (log: {work / 'log.txt'})", flush=True)
    t0, started_at = time.monotonic(), time.time()
    with open(work / "log.txt", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.monotonic() - t0
    try:
        r = nas_result(run_dir, started_at) if tool == "nas" else json.loads((work / "result.json").read_text())
        r = {**r, "wall_s": f"{r['wall_s']:.0f}s", "test_accuracy": f"{r['test_accuracy']:.4f}"}
    except (OSError, ValueError, KeyError) as exc:  # a run without a winner still gets its row
        print(f"{tool}: no result ({type(exc).__name__}: {exc})", file=sys.stderr)
        r = {"wall_s": "-", "test_accuracy": "none", "trials_started": "?", "trials_finished": "?", "epochs": "?",
             "notes": f"no result, exit {rc}: see {work / 'log.txt'}"}
    over = wall - seconds(budget)
    row = (f"| {time.strftime('%Y-%m-%d %H:%M')} | {tool} | {budget} | {wall:.0f}s"
           f"{f' (+{over:.0f}s over)' if over > 0.5 else ''} | {r['wall_s']} | {r['test_accuracy']} "
           f"| {r['trials_started']} / {r['trials_finished']} | {r['epochs']} | {load:.1f} | {r['notes']}"
           f"{''.join(f'; spec {o}' for o in overrides) if tool == 'nas' else ''} "
           f"| `{shlex.join(cmd)}` |")
    print(row, flush=True)
    text = results.read_text() if results.exists() else HEADER + "\n|" + "---|" * HEADER.count(" | ") + "---|\n"
    results.write_text(text + ("" if text.endswith("\n") else "\n") + row + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tool", choices=[*TOOLS, "all"])
    ap.add_argument("--budget", required=True, help="e.g. 90s, 30m, 1h")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-peers"), help="logs, run dirs, checkpoints")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md", help="the table to append to")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="nas only: change a key of the shipped spec, e.g. search.endgame=0.3 (repeatable)")
    args = ap.parse_args()
    if bad := [o for o in args.overrides if "=" not in o or not o.partition("=")[0]]:
        ap.error(f"--set {bad[0]!r}: expected KEY=VALUE, e.g. search.endgame=0.3")
    seconds(args.budget)  # fail early on a bad budget
    for tool in TOOLS if args.tool == "all" else [args.tool]:
        run(tool, args.budget, args.workdir, args.results, args.overrides)


if __name__ == "__main__":
    main()
