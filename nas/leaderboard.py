"""The leaderboard: one row per trial (params, metrics, state), as a pandas frame, CSV and a rich table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from nas.spec.model import Objective

_METRIC_COLS = ["val_accuracy", "val_loss", "accuracy", "loss", "params", "flops", "epochs_run", "wall_time_s"]


def frame(trials: list[Any], objectives: list[Objective]) -> pd.DataFrame:
    """Rows from Optuna FrozenTrials, best first by the primary objective; unfinished and failed rows last."""
    rows = []
    for t in trials:
        state = t.user_attrs.get("nas.state") or {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed",
                                                  "RUNNING": "running", "WAITING": "waiting"}.get(t.state.name, t.state.name.lower())
        if t.state.name == "FAIL" and "nas.state" not in t.user_attrs:
            state = "interrupted"  # killed or Ctrl-C: Optuna failed it, our objective never returned
        row: dict[str, Any] = {"trial": t.number, "state": state}
        for key in _METRIC_COLS:
            row[key] = t.user_attrs.get(key, math.nan)
        row["reason"] = t.user_attrs.get("reason", "")
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    primary = objectives[0]
    key = primary.metric
    df["_rank"] = df["state"].map({"finished": 0}).fillna(1)
    df = df.sort_values(["_rank", key, "trial"], ascending=[True, primary.resolved_direction == "minimize", True])
    return df.drop(columns="_rank").reset_index(drop=True)


def write(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def table(df: pd.DataFrame, top: int = 10) -> Table:
    t = Table(title=f"top {min(top, len(df))} of {len(df)} trials", title_justify="left")
    for col, justify in (("trial", "right"), ("state", "left"), ("val_acc", "right"), ("params", "right"),
                         ("MFLOPs", "right"), ("epochs", "right"), ("time", "right")):
        t.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    t.add_column("key params (full list in leaderboard.csv)", no_wrap=True, overflow="ellipsis")
    param_cols = [c for c in df.columns if c.startswith("param.")]
    shown = [c for c in param_cols if not c.startswith("param.block.")][:5]
    for _, r in df.head(top).iterrows():
        def num(v: Any, fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        keys = " ".join(f"{c[6:]}={_short(r[c])}" for c in shown if not _isnan(r[c]))
        t.add_row(str(r["trial"]), r["state"], num(r["val_accuracy"], ".4f"), num(r["params"], ",.0f"),
                  num(r["flops"] / 1e6 if not _isnan(r["flops"]) else math.nan, ".1f"),
                  num(r["epochs_run"], ".0f"), num(r["wall_time_s"], ".1f") + ("s" if not _isnan(r["wall_time_s"]) else ""),
                  keys or (r["reason"][:60] if r["reason"] else ""))
    return t


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
