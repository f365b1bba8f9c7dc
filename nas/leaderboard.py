"""The leaderboard: one row per trial (params, metrics, state), as a pandas frame, CSV and a rich table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

from nas.spec.model import Objective
from nas.trial import competing_value

METRIC_COLS = ["val_accuracy", "val_loss", "accuracy", "loss", "params", "flops", "epochs_run", "wall_time_s"]
#: measured on finished trials' TFLite artifacts when objectives or constraints ask (nas.deployed): columns only then
MEASURED_COLS = ["latency_ms", "size_kb", "int8_val_accuracy", "measure_s"]


def frame(trials: list[dict[str, Any]], objectives: list[Objective]) -> pd.DataFrame:
    """One row per trial, best first by the primary objective (finished trials, and paused ones less a margin for
    validation noise); finished ones that break search.constraints next; unfinished and failed rows last.

    Each backend hands plain dicts: trial, state (a nas.trial.TrialState value, or running | waiting),
    reason, any of METRIC_COLS, continues (the trial it continues), and param.<dimension>; whatever is missing
    reads as NaN / "".
    """
    rows = []
    measured = [k for k in MEASURED_COLS if any(k in t for t in trials)]
    constrained = any("feasible" in t for t in trials)
    for t in trials:
        row: dict[str, Any] = {"trial": t["trial"], "state": t["state"]}
        for key in [*METRIC_COLS, *measured]:
            row[key] = t.get(key, math.nan)
        if constrained:  # search.constraints: whether a finished trial meets them all
            row["feasible"] = t.get("feasible", "")
        row["reason"] = t.get("reason") or ""
        if t.get("continues") is not None:  # pruner asha: this trial continues a paused one from its checkpoint
            row["continues"] = t["continues"]
        row.update({k: v for k, v in t.items() if k.startswith("param.")})
        row["_score"] = competing_value(t["state"], objectives[0].metric, t.get(objectives[0].metric, math.nan),
                                        t.get("val_samples"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    primary = objectives[0]
    key = primary.metric
    if key not in df:
        df[key] = math.nan
    # Finished trials, and paused ones (pruner asha) by their competing value (nas.trial.competing_value): the
    # budget may end a search while its best configuration waits at a rung; the rest after them, by their value
    df["_rank"] = df["state"].map({"finished": 0}).fillna(2)
    df.loc[(df["state"] == "paused") & df["_score"].notna(), "_rank"] = 0
    df.loc[df["_rank"] == 2, "_score"] = df[key]
    if "feasible" in df:  # search.constraints: a finished trial that breaks them ranks after those that meet them,
        # and a paused one (never measured, so not known to meet them) with those
        df.loc[(df["_rank"] == 0) & (df["feasible"].isin([False, "False"]) | (df["state"] == "paused")), "_rank"] = 1
    df = df.sort_values(["_rank", "_score", "trial"], ascending=[True, primary.resolved_direction == "minimize", True])
    df = df.drop(columns=["_rank", "_score"]).reset_index(drop=True)
    if len(objectives) > 1:  # several objectives: which finished (feasible) trials no other one beats in all
        from nas.front import pareto_mask

        df.insert(2, "pareto", pareto_mask(df, objectives))
    return df


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


def table(df: pd.DataFrame, top: int = 10, title: str | None = None) -> Table:
    """The top trials; numbers never shrink, the key-params column takes what width is left. Measured deployment
    metrics and the Pareto front get columns when the search has them."""
    param_cols = [c for c in df.columns if c.startswith("param.")]
    shown = [c for c in param_cols if not c.startswith("param.block.")][:5]

    def num(v: Any, fmt: str, unit: str = "") -> str:
        return "-" if v is None or _isnan(v) else format(v, fmt) + unit

    columns: list[tuple[str, Any]] = [
        ("trial", lambda r: str(r["trial"])), ("state", lambda r: str(r["state"])),
        ("val_acc", lambda r: num(r["val_accuracy"], ".4f")), ("params", lambda r: num(r["params"], ",.0f")),
        ("MFLOPs", lambda r: num(r["flops"] / 1e6 if not _isnan(r["flops"]) else math.nan, ".1f")),
    ]
    if "latency_ms" in df:
        columns.append(("lat_ms", lambda r: num(r["latency_ms"], ".3f")))
    if "size_kb" in df:
        columns.append(("size_kB", lambda r: num(r["size_kb"], ".1f")))
    if "int8_val_accuracy" in df:
        columns.append(("int8_acc", lambda r: num(r["int8_val_accuracy"], ".4f")))
    if "feasible" in df:
        yes_no = {True: "yes", False: "no", "True": "yes", "False": "no"}
        columns.append(("ok", lambda r: yes_no.get(r["feasible"], "-")))
    if "pareto" in df:
        columns.append(("front", lambda r: "*" if r["pareto"] in (True, "True") else ""))
    columns += [("epochs", lambda r: num(r["epochs_run"], ".0f")),
                ("time", lambda r: num(r["wall_time_s"], ".1f", "s"))]
    rows = []
    for _, r in df.head(top).iterrows():
        keys = " ".join(f"{c.rsplit('.', 1)[-1]}={_short(r[c])}" for c in shown if not _isnan(r[c]))
        if r["state"] in ("failed", "diverged") and r["reason"]:
            keys = str(r["reason"])  # why it failed says more than its params
        rows.append([fn(r) for _, fn in columns] + [keys or (str(r["reason"])[:80] if r["reason"] else "")])
    t = Table(title=title or f"top {len(rows)} of {len(df)} trials", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, padding=(0, 1), collapse_padding=True, show_edge=False)
    for i, (head, _) in enumerate(columns):
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
