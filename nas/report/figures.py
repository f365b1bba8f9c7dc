"""The report's figures as inline SVG (matplotlib, Agg; text kept as text so the page stays searchable)."""

from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd

from nas.report.data import SearchData

_STATE_STYLE = {"finished": ("#1f77b4", "o"), "pruned": ("#ff7f0e", "x"), "paused": ("#17becf", "P"),
                "continued": ("#17becf", "."), "diverged": ("#d62728", "X"), "failed": ("#7f7f7f", "s"),
                "interrupted": ("#9467bd", "s")}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "nas"})
    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def history(data: SearchData) -> str | None:
    """Objective per trial and the best so far, over trial numbers and over wall-clock time: finished trials, and
    paused ones (hollow, their value where they paused) where one may win (SearchData.contenders)."""
    done = data.contenders().sort_values("trial")
    if done.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    metric = data.metric
    best = done[metric].cummin() if data.minimize else done[metric].cummax()
    paused = done["state"] == "paused"
    ax = axes[0]
    ax.scatter(done["trial"][~paused], done[metric][~paused], s=18, label=f"trial {metric}")
    if paused.any():
        ax.scatter(done["trial"][paused], done[metric][paused], s=18, facecolors="none", edgecolors="#1f77b4",
                   label="paused at a rung")
    ax.step(done["trial"], best, where="post", color="#2ca02c", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(loc="lower right" if not data.minimize else "upper right", frameon=False)
    ax = axes[1]
    if data.times:
        t0 = min(s for s, _ in data.times.values())
        ends = done["trial"].map(lambda n: (data.times[n][1] - t0) / 60 if n in data.times else math.nan)
        ax.set_xlabel("minutes since the first trial started")
    else:  # no clock: the trials' own training times, added up
        wall = pd.to_numeric(data.board.sort_values("trial").set_index("trial")["wall_time_s"], errors="coerce")
        cum = wall.fillna(0).cumsum() / 60
        ends = done["trial"].map(cum)
        ax.set_xlabel("minutes of training (summed)")
    order = ends.sort_values().index
    ax.scatter(ends[~paused], done[metric][~paused], s=18)
    ax.scatter(ends[paused], done[metric][paused], s=18, facecolors="none", edgecolors="#1f77b4")
    vals = done.loc[order, metric]
    ax.step(ends.loc[order], vals.cummin() if data.minimize else vals.cummax(), where="post", color="#2ca02c")
    ax.set_ylabel(metric)
    return _svg(fig)


def curves(data: SearchData) -> list[tuple[str, str]]:
    """(metric, svg) per epoch metric: one line per trial; pruned and diverged ones end in a marker."""
    out: list[tuple[str, str]] = []
    plt = _plt()
    for metric in [m for m in (data.metric, "val_accuracy", "val_loss") if m in data.curves][:2]:
        if any(metric == m for m, _ in out):
            continue
        fig, ax = plt.subplots(figsize=(10, 3.6))
        labelled: set[str] = set()
        for c in data.curves[metric]:
            color, marker = _STATE_STYLE.get(c.state, ("#17becf", "o"))
            ax.plot(c.steps, c.values, color=color, alpha=0.55, lw=1.2)
            if c.state != "finished":
                label = c.state if c.state not in labelled else None
                labelled.add(c.state)
                ax.scatter([c.steps[-1]], [c.values[-1]], color=color, marker=marker, s=40, zorder=3,
                           label=f"{label}: stopped here" if label else None)
        ax.plot([], [], color=_STATE_STYLE["finished"][0], label="finished")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(frameon=False, loc="best")
        out.append((metric, _svg(fig)))
    return out


def importance(values: dict[str, float]) -> str | None:
    if not values:
        return None
    plt = _plt()
    items = sorted(values.items(), key=lambda kv: kv[1])[-15:]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    return _svg(fig)


def parallel(data: SearchData) -> str | None:
    """Parallel coordinates: each varying param scaled to [0, 1] (categories evenly spaced), then the objective."""
    done = data.finished()
    cols = [c for c in data.param_columns() if done[c].nunique(dropna=True) > 1] if not done.empty else []
    cols = sorted(cols, key=lambda c: (c.startswith("param.block."), c))[:10]
    if done.empty or not cols:
        return None
    plt = _plt()
    axes_cols = [*cols, data.metric]
    scaled, ticks = {}, {}
    for c in axes_cols:
        s = done[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            lo, hi = float(s.min()), float(s.max())
            log = c != data.metric and lo > 0 and hi / lo > 20

            def f(v: float, lo: float = lo, hi: float = hi, log: bool = log) -> float:
                if hi <= lo:
                    return 0.5
                return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if log else (v - lo) / (hi - lo)

            scaled[c] = s.map(lambda v, f=f: math.nan if pd.isna(v) else f(float(v)))
            ticks[c] = (f"{lo:.3g}", f"{hi:.3g}")
        else:
            cats = sorted(s.dropna().astype(str).unique())
            pos = {k: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, k in enumerate(cats)}
            scaled[c] = s.map(lambda v, pos=pos: math.nan if pd.isna(v) else pos[str(v)])
            ticks[c] = (cats[0], cats[-1])
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(axes_cols)), 4))
    cmap = plt.get_cmap("viridis")
    obj = scaled[data.metric]
    for i in done.index:
        ys = [scaled[c][i] for c in axes_cols]
        shade = obj[i] if not data.minimize else 1 - obj[i]
        ax.plot(range(len(axes_cols)), ys, color=cmap(0.0 if pd.isna(shade) else shade), alpha=0.7, lw=1.2)
    for x, c in enumerate(axes_cols):
        ax.axvline(x, color="#999", lw=0.8)
        ax.text(x, -0.08, ticks[c][0], ha="center", va="top", fontsize=7)
        ax.text(x, 1.04, ticks[c][1], ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(axes_cols)), [c.removeprefix("param.") for c in axes_cols], rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.12)
    ax.spines["left"].set_visible(False)
    return _svg(fig)


def pareto(data: SearchData, front: pd.DataFrame) -> str | None:
    metrics = [m for m, _ in data.objectives]
    done = data.finished()
    if len(metrics) < 2 or done.empty:
        return None
    plt = _plt()
    x, y = metrics[0], metrics[1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(done[x], done[y], s=18, color="#aaa", label="trials")
    f = front.sort_values(x)
    ax.plot(f[x], f[y], "o-", color="#d62728", label="Pareto front")
    for _, r in f.iterrows():
        ax.annotate(str(int(r["trial"])), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x} ({data.objectives[0][1]})")
    ax.set_ylabel(f"{y} ({data.objectives[1][1]})")
    ax.legend(frameon=False)
    return _svg(fig)
