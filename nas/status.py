"""`nas status runs/<name>`: progress and leaderboard of a search, finished or running.

Strictly read-only: it reads leaderboard.csv (rewritten whole after every trial), run.json, best/metrics.json,
the Optuna study opened as a read-only SQLite file, and /proc/locks to tell whether a search holds the run
directory. It takes no lock and writes nothing, so it never disturbs a running search.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from rich.console import Console

COUNTED = ("finished", "pruned", "paused", "diverged")


def lock_holder(lock_file: Path) -> int | None:
    """The pid holding the run directory's kernel lock, from /proc/locks (Linux); None when free or unknown."""
    try:
        st = os.stat(lock_file)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not the holder
            continue
        try:
            pid, dev_ino = int(parts[4]), parts[5]
        except (IndexError, ValueError):
            continue
        if int(dev_ino.rsplit(":", 1)[1]) == st.st_ino:
            return pid
    return None


def running_trials(study_db: Path) -> list[int]:
    """Numbers of the trials the Optuna study marks RUNNING (opened read-only; [] when there is no study)."""
    if not study_db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{study_db}?mode=ro", uri=True, timeout=1)) as con:
            return [int(r[0]) for r in con.execute("SELECT number FROM trials WHERE state = 'RUNNING' ORDER BY number")]
    except sqlite3.Error:
        return []


def show(run_dir: Path, console: Console, top: int = 10) -> None:
    from nas.leaderboard import table
    from nas.report.data import load

    data = load(Path(run_dir), with_mlflow=False, with_curves=False)
    board, counts = data.board, data.counts()
    total = data.spec.search.trials if data.spec is not None else None
    done = sum(counts.get(s, 0) for s in COUNTED)
    holder = lock_holder(data.run_dir / ".lock")
    running = running_trials(data.run_dir / "study.db") if holder else []
    training = f", trial {', '.join(map(str, running))} training" if running else ""
    state = f"[green]running[/] (pid {holder}{training})" if holder else "not running"
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    console.print(f"[bold]{data.name}[/] ({data.run_dir}): {state}")
    console.print(f"progress: {done} of {total if total is not None else '?'} trials done ({tally})")
    leaders = data.contenders()  # a paused trial may lead (pruner asha): the leaderboard's order says
    if data.best:
        console.print(f"best: trial {data.best.get('trial')}, val_accuracy {_f(data.best.get('val_accuracy'))}, "
                      f"test_accuracy {_f(data.best.get('test_accuracy'))} (held out)"
                      + (" (paused at a rung when the search ended)" if data.best.get("state") == "paused" else ""))
    elif not leaders.empty:
        r = leaders.iloc[0]
        console.print(f"best so far: trial {int(r['trial'])}, {data.metric} {_f(r[data.metric])}"
                      + (" (paused at a rung)" if r["state"] == "paused" else "")
                      + " (test accuracy is measured when the search ends)")
    if board.empty:
        console.print("no trial has finished yet" + (" (the first one is training)" if holder else ""))
        return
    for col in ("val_accuracy", "params", "flops", "epochs_run", "wall_time_s"):
        if col not in board:
            board[col] = float("nan")
    console.print(table(board, top=top))
    if (data.run_dir / "report" / "index.html").exists():
        console.print(f"report: {data.run_dir / 'report' / 'index.html'}")


def _f(v: Any) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return "-"

