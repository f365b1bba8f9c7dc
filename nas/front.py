"""The Pareto front of a search, and the rules of `export.select` that pick one trial from the leaderboard.

Pure pandas over leaderboard rows (nas.leaderboard.frame), so the end-of-search table, MLflow tags, the
report and `nas export` all agree on which trials are on the front.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from nas.errors import NasError
from nas.spec.model import Objective, SelectRule


def candidates(df: pd.DataFrame, objectives: list[Objective]) -> pd.DataFrame:
    """Finished trials that meet search.constraints and have a finite value for every objective."""
    if df.empty:
        return df
    keep = df["state"] == "finished"
    if "feasible" in df:
        keep &= df["feasible"].map(lambda v: v is not False and v != "False" and v != 0)
    for o in objectives:
        keep &= pd.to_numeric(df.get(o.metric, pd.Series(math.nan, index=df.index)), errors="coerce").map(
            lambda v: math.isfinite(v))
    return df[keep]


def _costs(df: pd.DataFrame, objectives: list[Objective]) -> np.ndarray:
    """Objective values as costs (lower is better), one column per objective."""
    cols = [pd.to_numeric(df[o.metric]).to_numpy(float) * (-1 if o.resolved_direction == "maximize" else 1)
            for o in objectives]
    return np.stack(cols, axis=1) if cols else np.empty((len(df), 0))


def pareto_mask(df: pd.DataFrame, objectives: list[Objective]) -> pd.Series:
    """True for the trials no other candidate dominates (at least as good in every objective, better in one);
    False for every other row, unfinished and infeasible ones included."""
    mask = pd.Series(False, index=df.index)
    pool = candidates(df, objectives)
    if pool.empty:
        return mask
    c = _costs(pool, objectives)
    for i, idx in enumerate(pool.index):
        dominated = np.any(np.all(c <= c[i], axis=1) & np.any(c < c[i], axis=1))
        mask[idx] = not dominated
    return mask


def knee(df: pd.DataFrame, objectives: list[Objective]) -> tuple[int, str]:
    """The front's knee: with two objectives, the front point farthest from the straight line between the front's
    two ends (where giving up a little of one objective stops buying much of the other); with more, the point
    nearest the ideal one (every objective at its best on the front), each objective scaled to [0, 1]."""
    front = df[pareto_mask(df, objectives)]
    if front.empty:
        raise NasError("export.select: knee needs a Pareto front, but no trial finished within search.constraints")
    if len(front) <= 2 or len(objectives) < 2:
        best = front.iloc[0]  # frame() sorts by the primary objective
        return int(best["trial"]), (f"the knee of the Pareto front: with {len(front)} trial(s) on it, the best by "
                                    f"{objectives[0].metric}")
    c = _costs(front, objectives)
    lo, hi = c.min(axis=0), c.max(axis=0)
    z = (c - lo) / np.where(hi > lo, hi - lo, 1.0)
    if len(objectives) == 2:
        a, b = z[np.argmin(z[:, 0])], z[np.argmin(z[:, 1])]  # the two ends
        d = b - a
        score = np.abs(d[0] * (z[:, 1] - a[1]) - d[1] * (z[:, 0] - a[0])) / max(float(np.hypot(*d)), 1e-12)
        i = int(np.argmax(score))
        how = "farthest from the line between its two ends"
    else:
        i = int(np.argmin(np.linalg.norm(z, axis=1)))
        how = "nearest the ideal point"
    row = front.iloc[i]
    values = ", ".join(f"{o.metric} {_fmt(row[o.metric])}" for o in objectives)
    return int(row["trial"]), f"the knee of the Pareto front of {len(front)} trials ({how}): {values}"


def select(df: pd.DataFrame, rule: str | SelectRule, objectives: list[Objective]) -> tuple[int, str]:
    """(trial, why) by export.select: best | knee | {maximize|minimize: metric, where: {metric: bound}}."""
    if rule == "knee":
        return knee(df, objectives)
    pool = candidates(df, objectives if rule == "best" else [])
    if rule == "best" or isinstance(rule, str):
        if pool.empty:
            raise NasError("no trial finished within search.constraints, so there is no winner to export")
        row = pool.iloc[0]
        first = objectives[0].metric
        return int(row["trial"]), f"the best finished trial by {first} ({_fmt(row[first])})"
    metric = rule.metric
    if metric not in pool:
        raise NasError(f"export.select: no trial has {metric}; the search did not measure it (add it to "
                       "search.objectives or search.constraints)")
    keep = pd.to_numeric(pool[metric], errors="coerce").map(math.isfinite)
    for name, bound in rule.where.items():
        if name not in pool:
            raise NasError(f"export.select.where.{name}: no trial has {name}; the search did not measure it (add it "
                           "to search.objectives or search.constraints)")
        keep &= pd.to_numeric(pool[name], errors="coerce").map(lambda v, b=bound: math.isfinite(v) and b.holds(v))
    met = pool[keep]
    where = " and ".join(f"{k} {b}" for k, b in rule.where.items())
    if met.empty:
        raise NasError(f"export.select: no finished trial has {where or metric}; loosen export.select.where, or "
                       "pick one with `nas export --trial N`")
    values = pd.to_numeric(met[metric]).to_numpy(float)
    row = met.iloc[int(np.argmax(values) if rule.maximize else np.argmin(values))]
    goal = "highest" if rule.maximize else "lowest"
    return int(row["trial"]), (f"the {goal} {metric} ({_fmt(row[metric])}) among {len(met)} finished trials"
                               + (f" with {where}" if where else ""))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float, np.floating)) else str(v)
