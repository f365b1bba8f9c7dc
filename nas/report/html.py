"""The report page: one self-contained HTML file (inline CSS and SVG, no script, nothing fetched)."""

from __future__ import annotations

import html
import math
import time
from typing import Any

import pandas as pd

from nas.report import figures
from nas.report.data import SearchData, blocks, importances, pareto, trial_arch

SECTIONS = {"glance": "At a glance", "history": "Optimization history", "curves": "Learning curves",
            "importance": "Parameter importances", "parallel": "Parallel coordinates", "pareto": "Pareto front",
            "architectures": "Top architectures", "export": "Export", "failures": "Failures"}

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-style:italic} .kv td:first-child{color:#555}
.arch{display:flex;flex-wrap:wrap;align-items:stretch;gap:.4em;margin:.4em 0 1.2em}
.blk{border:1px solid #8aa;border-radius:6px;padding:.4em .6em;background:#f3f8fb;min-width:9em}
.blk b{display:block} .blk .shape{color:#046;font-family:monospace} .blk .p{color:#666;font-size:12px}
.arrow{align-self:center;color:#999} svg{max-width:100%;height:auto}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, fmt: str = ".4f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v) if v not in (None, "") else "-"
    return "-" if math.isnan(f) else format(f, fmt)


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f"<p class=note>{_e(text)}</p>"


def glance(d: SearchData) -> str:
    spec, counts = d.spec, d.counts()
    rows: list[tuple[str, str]] = []
    data_desc = d.best.get("data") or (d.parent_run.data.params.get("data") if d.parent_run else None)
    rows.append(("data", _e(data_desc or (spec.data.source if spec else "-"))))
    if spec is not None:
        from nas.space import SearchSpace

        space = SearchSpace(spec)
        size = space.size()
        rows.append(("search space", f"{len(space.dims)} dimensions, "
                     + (f"{size:,} distinct points" if size else f"continuous ({space.size(finite_only=True):,} "
                        "combinations of its discrete dimensions)")))
        s = spec.search
        rows.append(("budget", _e(f"{s.trials} trials, up to {spec.train.epochs} epochs each"
                                  + (f", timeout {s.timeout:g} s" if s.timeout else "")
                                  + f"; backend {s.backend}, sampler {getattr(s, 'sampler', '-')}, "
                                    f"pruner {getattr(s, 'pruner', '-')}")))
        rows.append(("objectives", _e(", ".join(f"{m} ({dr})" for m, dr in d.objectives))))
    rows.append(("trials", _e(", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({len(d.board)} in all)")))
    wall = pd.to_numeric(d.board.get("wall_time_s", pd.Series(dtype=float)), errors="coerce").sum()
    span = (max(e for _, e in d.times.values()) - min(s for s, _ in d.times.values())) if d.times else None
    rows.append(("time", f"{wall / 60:.1f} min of training" + (f", {span / 60:.1f} min wall clock" if span else "")))
    if d.best:
        rows.append(("winner", f"trial {_e(d.best.get('trial'))}: val_accuracy {_num(d.best.get('val_accuracy'))}, "
                     f"<b>test_accuracy {_num(d.best.get('test_accuracy'))}</b> (held out, measured once), "
                     f"{_num(d.best.get('params'), ',.0f')} parameters"
                     + ("; paused at a rung when the search ended, it led every finished trial past the noise of "
                        "the validation split" if d.best.get("state") == "paused" else "")))
    elif d.contenders().empty:
        rows.append(("winner", "<b>no trial finished</b>, so there is no best model: see Failures below"))
    else:
        rows.append(("winner", "not measured yet (the search is running or stopped before its end)"))
    body = "<table class=kv>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"
    done = d.contenders()  # paused trials too, where one may win (SearchData.contenders)
    if not done.empty:
        top = done.head(5)
        pcols = [c for c in d.param_columns() if not c.startswith("param.block.")][:6]
        body += "<h3>Leaderboard (top 5)</h3>" + _table(
            ["trial", "state", d.metric, "params", "epochs", *[c.removeprefix("param.") for c in pcols]],
            [[_e(int(r["trial"])), _e(r["state"]), _num(r[d.metric]), _num(r.get("params"), ",.0f"),
              _num(r.get("epochs_run"), ".0f"), *[_e(_short(r[c])) for c in pcols]] for _, r in top.iterrows()],
            {2, 3, 4})
    return body


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def history(d: SearchData) -> str:
    svg = figures.history(d)
    return svg or _note("no finished (or leading paused) trial yet: nothing to plot")


def curves(d: SearchData) -> str:
    figs = figures.curves(d)
    if not figs:
        return _note("no per-epoch history was recorded (MLflow tracking off and no Optuna intermediate values)")
    return "".join(f"<h3>{_e(m)} per epoch</h3>{svg}" for m, svg in figs)


def importance(d: SearchData) -> str:
    try:
        values = importances(d)
    except Exception as e:
        return _note(f"could not compute importances ({type(e).__name__}: {str(e)[:200]})")
    if not values:
        return _note("needs at least 3 finished trials and a parameter that varies among them")
    return (figures.importance(values) or "") + _table(["parameter", "importance"],
                                               [[_e(k), _num(v, ".3f")] for k, v in values.items()], {1})


def parallel(d: SearchData) -> str:
    return figures.parallel(d) or _note("no finished trials with varying parameters yet")


def pareto_section(d: SearchData) -> str:
    if len(d.objectives) < 2:
        return _note(f"one objective ({d.metric}): no Pareto front; the leaderboard above ranks the trials")
    front = pareto(d)
    svg = figures.pareto(d, front)
    if svg is None:
        return _note("no finished trial yet")
    metrics = [m for m, _ in d.objectives]
    return svg + _table(["trial", *metrics], [[_e(int(r["trial"])), *[_num(r[m]) for m in metrics]]
                                              for _, r in front.iterrows()], set(range(1, len(metrics) + 1)))


def architectures(d: SearchData, top: int = 3) -> str:
    done = d.contenders().head(top)
    if done.empty:
        return _note("no finished trial yet")
    out = []
    for _, row in done.iterrows():
        head = (f"<h3>trial {int(row['trial'])}: {d.metric} {_num(row[d.metric])}, "
                f"{_num(row.get('params'), ',.0f')} parameters"
                + (" (paused at a rung)" if row["state"] == "paused" else "") + "</h3>")
        try:
            arch = trial_arch(d, row)
            drawn = [f"<div class=blk><b>input</b><span class=shape>{_e('x'.join(map(str, arch.input_shape)))}</span>"
                     f"<div class=p>rescale 1/{arch.pixel_max:g}</div></div>"]
            for b in blocks(arch):
                layers = "<br>".join(_e(x) for x in b["layers"])
                drawn.append(f"<div class=blk><b>{_e(b['name'])}</b>{layers}<br><span class=shape>&rarr; "
                             f"{_e('x'.join(map(str, b['shape'])))}</span>"
                             f"<div class=p>{b['params']:,} params</div></div>")
            out.append(head + "<div class=arch>" + "<span class=arrow>&rarr;</span>".join(drawn) + "</div>")
        except Exception as e:
            out.append(head + _note(f"could not rebuild its architecture ({type(e).__name__}: {str(e)[:150]})"))
    return "".join(out)


def export(d: SearchData) -> str:
    m = d.manifest
    if not m:
        return _note(f"not exported yet: `nas export {d.run_dir}` writes {d.run_dir / 'export' / 'manifest.json'}")
    arts = m.get("artifacts") or {}
    rows = []
    for name, a in arts.items():
        a = a if isinstance(a, dict) else {}
        rows.append([_e(name), _e(a.get("status", "-")), _e(a.get("runtime", a.get("format", "-"))),
                     _num(a.get("bytes", math.nan) / 1024 if isinstance(a.get("bytes"), (int, float)) else None, ".1f"),
                     _num(a.get("test_accuracy")), _num(a.get("top1_agreement")),
                     _num(a.get("latency_ms_median"), ".3f")])
    src = m.get("source", {})
    sparsity = _num((m.get("sparsity") or {}).get("overall"), ".0%")
    return (f"<p>trial {_e(src.get('trial', '-'))}, sparsity {sparsity}</p>"
            + _table(["artifact", "status", "runtime", "KB", "test accuracy", "top-1 agreement", "ms / image"], rows,
                     {3, 4, 5, 6}))


def failures(d: SearchData) -> str:
    b = d.board
    if b.empty:
        return _note("no trial has run yet")
    bad = b[b["state"] != "finished"]
    if bad.empty:
        return _note("every trial finished")
    grouped = bad.assign(reason=bad["reason"].replace("", "(no reason recorded)")).groupby(["state", "reason"])
    rows = [[_e(state), _e(reason), _e(len(g)), _e(", ".join(map(str, sorted(g["trial"].astype(int))[:12])))]
            for (state, reason), g in sorted(grouped, key=lambda kv: -len(kv[1]))]
    return _table(["state", "reason", "count", "trials"], rows, {2})


def render(d: SearchData) -> str:
    parts = {"glance": glance, "history": history, "curves": curves, "importance": importance, "parallel": parallel,
             "pareto": pareto_section, "architectures": architectures, "export": export, "failures": failures}
    body = []
    for key, title in SECTIONS.items():
        try:
            content = parts[key](d)
        except Exception as e:  # one broken section never costs the page
            content = _note(f"this section failed: {type(e).__name__}: {str(e)[:300]}")
        body.append(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>')
    banner = ("" if not d.contenders().empty else
              "<p class=warn><b>No trial finished in this search.</b> The sections below say what ran and why "
              "trials stopped.</p>")
    notes = "".join(_note(n) for n in d.notes)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>nas report: {_e(d.name)}</title>"
            f"<meta name=viewport content='width=device-width'><style>{_CSS}</style></head><body>"
            f"<h1>nas search <code>{_e(d.name)}</code></h1><p class=note>{_e(d.run_dir)} &middot; report written "
            f"{time.strftime('%Y-%m-%d %H:%M')}</p>{banner}{notes}{''.join(body)}</body></html>")
