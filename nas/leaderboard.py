"""The leaderboard: one row per trial (params, metrics, state), as a pandas frame, CSV and a rich table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

from nas.spec.model import Objective

METRIC_COLS = ["val_accuracy", "val_loss", "accuracy", "loss", "params", "flops", "epochs_run", "wall_time_s"]


def frame(trials: list[dict[str, Any]], objectives: list[Objective]) -> pd.DataFrame:
    """One row per trial, best first by the primary objective; unfinished and failed rows last.

    Each backend hands plain dicts: trial, state (a nas.trial.TrialState value, or running | waiting),
    reason, any of METRIC_COLS, continues (the trial it continues), and param.<dimension>; whatever is missing
    reads as NaN / "".
    """
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t["trial"], "state": t["state"]}
        for key in METRIC_COLS:
            row[key] = t.get(key, math.nan)
        row["reason"] = t.get("reason") or ""
        if t.get("continues") is not None:  # pruner asha: this trial continues a paused one from its checkpoint
            row["continues"] = t["continues"]
        row.update({k: v for k, v in t.items() if k.startswith("param.")})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    primary = objectives[0]
    key = primary.metric
    df["_rank"] = df["state"].map({"finished": 0}).fillna(1)
    df = df.sort_values(["_rank", key, "trial"], ascending=[True, primary.resolved_direction == "minimize", True])
    return df.drop(columns="_rank").reset_index(drop=True)


def reasons(df: pd.DataFrame, states: tuple[str, ...] = ("failed", "diverged", "pruned"), top: int = 5) -> str:
    """The most common reasons among trials in `states`, one indented line each: "  3 x diverged at ..."."""
    if df.empty:
        return ""
    counts = df[df["state"].isin(states) & (df["reason"] != "")]["reason"].value_counts().head(top)
    return "\n".join(f"  {n} x {r}" for r, n in counts.items())


def write(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def table(df: pd.DataFrame, top: int = 10) -> Table:
    """The top trials; numbers never shrink, the key-params column takes what width is left."""
    param_cols = [c for c in df.columns if c.startswith("param.")]
    shown = [c for c in param_cols if not c.startswith("param.block.")][:5]

    def num(v: Any, fmt: str, unit: str = "") -> str:
        return "-" if v is None or _isnan(v) else format(v, fmt) + unit

    rows = []
    for _, r in df.head(top).iterrows():
        keys = " ".join(f"{c.rsplit('.', 1)[-1]}={_short(r[c])}" for c in shown if not _isnan(r[c]))
        if r["state"] in ("failed", "diverged") and r["reason"]:
            keys = str(r["reason"])  # why it failed says more than its params
        rows.append([str(r["trial"]), str(r["state"]), num(r["val_accuracy"], ".4f"), num(r["params"], ",.0f"),
                     num(r["flops"] / 1e6 if not _isnan(r["flops"]) else math.nan, ".1f"),
                     num(r["epochs_run"], ".0f"), num(r["wall_time_s"], ".1f", "s"),
                     keys or (str(r["reason"])[:80] if r["reason"] else "")])
    t = Table(title=f"top {len(rows)} of {len(df)} trials", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1), collapse_padding=True, show_edge=False)
    heads = ["trial", "state", "val_acc", "params", "MFLOPs", "epochs", "time"]
    for i, head in enumerate(heads):
        width = max([len(head), *(len(row[i]) for row in rows)])
        t.add_column(head, justify="left" if head == "state" else "right", no_wrap=True, min_width=width)
    t.add_column("key params (all in leaderboard.csv)", no_wrap=True, overflow="ellipsis")
    for row in rows:
        t.add_row(*row)
    return t


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
