"""`nas validate`: check a spec and its data, show the space, and survey which shapes are impossible.

It also checks where `nas search` would write, the MLflow store and the run directory, without creating
anything: a store or run directory that cannot be used fails here as it would at the start of the search.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nas.arch import plan
from nas.errors import InvalidArchitecture, RunDirError, TrackingError
from nas.space import DataInfo, SearchSpace
from nas.spec.dims import Choice, describe
from nas.spec.loader import LoadedSpec
from nas.spec.model import STATIC_METRICS

SURVEY_SAMPLES = 2000


@dataclass(frozen=True)
class Survey:
    samples: int
    impossible: int
    too_large: int
    min_params: int | None
    max_params: int | None
    reasons: list[tuple[str, int]]


def survey(space: SearchSpace, data: DataInfo, samples: int = SURVEY_SAMPLES, seed: int = 0) -> Survey:
    """Sample the space uniformly; count collapses and oversize models; parameter range of the rest."""
    rng = random.Random(seed)
    impossible = too_large = 0
    sized: list[tuple[int, dict[str, Any]]] = []
    reasons: Counter[str] = Counter()
    limit = space.spec.space.max_params
    for _ in range(samples):
        params = space.sample(rng)
        try:
            p = plan(space.decode(params, data).arch).params
        except InvalidArchitecture as exc:
            impossible += 1
            reasons[re.sub(r"^block \d+: \d+x\d+ input", "block N: small input", exc.reason.split(" (")[0])] += 1
            continue
        if limit and p > limit:
            too_large += 1
            continue
        sized.append((p, params))
    if not sized:
        return Survey(samples, impossible, too_large, None, None, reasons.most_common(3))
    sized.sort(key=lambda t: t[0])
    smallest = _extreme(space, data, sized[0][1], -1)
    largest = _extreme(space, data, sized[-1][1], +1)
    return Survey(samples, impossible, too_large, smallest, largest, reasons.most_common(3))


def _trainable_params(space: SearchSpace, data: DataInfo, params: dict[str, Any], metric: str = "params") -> int | None:
    try:
        shape = plan(space.decode(params, data).arch)
    except InvalidArchitecture:
        return None
    limit = space.spec.space.max_params
    return None if limit and shape.params > limit else int(getattr(shape, metric))


def _extreme(space: SearchSpace, data: DataInfo, start: dict[str, Any], sign: int, metric: str = "params") -> int:
    """Coordinate search from the most extreme sample: move one dimension at a time to its end values
    while the model stays trainable. Finds the true extremes of monotone spaces, near them otherwise."""
    params, best = dict(start), _trainable_params(space, data, start, metric) or 0
    for _ in range(4):
        improved = False
        for name, d in space.dims.items():
            options = d.values if isinstance(d, Choice) else (d.low, d.high)  # type: ignore[union-attr]
            for value in options:
                p = _trainable_params(space, data, {**params, name: value}, metric)
                if p is not None and sign * p > sign * best:
                    params, best, improved = {**params, name: value}, p, True
        if not improved:
            break
    return best


def check_static_constraints(loaded: LoadedSpec, space: SearchSpace, data: DataInfo, samples: int = 300) -> None:
    """search.constraints on params or flops that no model of the space can meet: refused before any training,
    with the smallest (or largest) value the space reaches."""
    from nas.errors import NasError

    for metric in STATIC_METRICS:
        bound = loaded.spec.search.constraints.get(metric)  # type: ignore[call-overload]
        if bound is None:
            continue
        sign = -1 if bound.op in ("<=", "<") else +1
        rng = random.Random(0)
        sized = [(v, p) for p in (space.sample(rng) for _ in range(samples))
                 if (v := _trainable_params(space, data, p, metric)) is not None]
        if not sized:
            return  # every shape collapses: `nas validate` says so on its own
        start = (min if sign < 0 else max)(sized, key=lambda t: t[0])[1]
        reach = _extreme(space, data, start, sign, metric)
        if not bound.holds(reach):
            word = "smallest" if sign < 0 else "largest"
            raise NasError(f"{loaded.where(f'search.constraints.{metric}')}: no model of this space meets "
                           f"'{bound}': the {word} trainable one has {reach:,} {metric}; loosen the constraint, or "
                           f"{'shrink' if sign < 0 else 'grow'} the space (depth, filters, dense units)")


def _grouped_rows(space: SearchSpace) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, d in space.all_dims.items():
        m = re.fullmatch(r"block\.\d+\.(.+)", name)
        if m:
            key = f"block.1..{space.max_depth}.{m.group(1)}"
            if key in seen:
                continue
            seen.add(key)
            rows.append((key, f"{describe(d)}  (per block)"))
        else:
            rows.append((name, describe(d)))
    return rows


def _nearest(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("/"))


def _creatable(path: Path) -> str | None:
    """Why the folder `path` could not be created (or used, when it exists), or None when it can."""
    found = _nearest(path)
    if not found.is_dir():
        return f"{found} is a file, not a folder"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"{found} is not writable"
    return None


def _store_uri(loaded: LoadedSpec, runs_dir: Path, tracking_uri: str | None) -> str:
    from nas.search import SearchOptions, resolve_tracking_uri  # the one rule, as `nas search` applies it

    return resolve_tracking_uri(loaded, SearchOptions(runs_dir=runs_dir, tracking_uri=tracking_uri))


def check_store(loaded: LoadedSpec, runs_dir: Path = Path("runs"), tracking_uri: str | None = None) -> str:
    """The MLflow store `nas search` would use, checked without creating it; a line for the report.
    Raises TrackingError when it cannot be used."""
    if not loaded.spec.tracking.enabled:
        return "MLflow: off (tracking.enabled: false)"
    uri = _store_uri(loaded, runs_dir, tracking_uri)
    fix = "check tracking.uri in the spec, --tracking-uri, or --runs-dir for the default store"
    if uri.startswith("sqlite:"):
        rest = uri[len("sqlite://"):].split("?", 1)[0]
        if rest in ("", "/", "/:memory:"):
            return f"MLflow store: {uri} (in memory)"
        db = Path(rest[1:] if rest.startswith("/") else rest)
        if db.is_dir():
            raise TrackingError(f"MLflow tracking store {uri!r} cannot be used: {db} is a folder, not a database "
                                f"file. Fix: name a file such as {db / 'mlflow.db'} ({fix}).")
        problem = _creatable(db.parent) or (None if not db.exists() or os.access(db, os.W_OK) else f"{db} is read-only")
        if problem is None and db.exists():
            try:
                with closing(sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5)) as con:
                    con.execute("PRAGMA schema_version").fetchone()
            except sqlite3.Error as exc:
                problem = f"{db} is not a SQLite database ({exc})"
        if problem:
            raise TrackingError(f"MLflow tracking store {uri!r} cannot be used: {problem}. Fix: point it at a "
                                f"writable location ({fix}).")
        return f"MLflow store: {uri} ({'exists, writable' if db.exists() else 'will be created'})"
    if uri.startswith(("http://", "https://", "file:")) or "://" not in uri:
        from nas.tracking import check_tracking_uri

        check_tracking_uri(uri)  # HTTP: one request; file: the MLflow 3.17 opt-in. Creates nothing.
        return f"MLflow store: {uri} (reachable)"
    return f"MLflow store: {uri} (not checked: nas checks sqlite, http(s) and file stores)"


def check_run_dir(loaded: LoadedSpec, runs_dir: Path = Path("runs")) -> str:
    """The run directory `nas search` would create or resume, checked without creating it; a line for the
    report. Raises RunDirError when it cannot be used."""
    from nas.rundir import RunDir, _lock_holder

    run = RunDir(runs_dir / loaded.spec.name)
    problem = _creatable(run.root)
    if problem:
        raise RunDirError(f"{run.root}: cannot create the run directory: {problem}; choose another place with "
                          "--runs-dir")
    if not run.meta.exists():
        return f"run directory: {run.root} (new)"
    holder = _lock_holder(run)
    if holder:
        return f"run directory: {run.root} ([yellow]a search is running there now[/], pid {holder})"
    if run.read_meta().get("spec_hash") != loaded.hash:
        return (f"run directory: {run.root} ([yellow]made by a different spec[/]: `nas search` refuses it; "
                "rerun with --new to move it aside, or give the spec another name)")
    return f"run directory: {run.root} (exists: `nas search` resumes it)"


def report(loaded: LoadedSpec, data: DataInfo, description: str, split_sizes: tuple[int, int, int],
           console: Console, runs_dir: Path = Path("runs"), tracking_uri: str | None = None) -> Survey:
    from nas import framework as fw

    fw.require(loaded.spec.train.backend, loaded.where("train.backend"))
    outputs = [check_store(loaded, runs_dir, tracking_uri), check_run_dir(loaded, runs_dir)]
    space = SearchSpace(loaded.spec)
    t = Table(title=f"search space of {loaded.spec.name!r} ({len(space.dims)} searched dimensions)",
              title_justify="left")
    t.add_column("dimension")
    t.add_column("values")
    for name, text in _grouped_rows(space):
        searched = not text.startswith("fixed")
        t.add_row(name if searched else f"[dim]{name}[/]", text if searched else f"[dim]{text}[/]")
    console.print(t)
    size = space.size()
    console.print(f"size: {size:,} distinct architectures x training settings" if size
                  else "size: continuous (float ranges); finite dimensions only would give "
                       f"{space.size(finite_only=True):,} combinations")
    tr, va, te = split_sizes
    console.print(f"data: {description}; train {tr}, val {va}, test {te} (held out); input {data.input_shape}, "
                  f"{data.num_classes} classes, pixels 0..{data.pixel_max:g}")
    s = survey(space, data)
    if s.min_params is not None:
        console.print(f"parameters: smallest {s.min_params:,}, largest {s.max_params:,} trainable model "
                      f"(coordinate search from {s.samples} random samples)")
    console.print(f"impossible: {s.impossible} of {s.samples} sampled shapes collapse"
                  + (f"; {s.too_large} exceed space.max_params" if s.too_large else "")
                  + (" (they are skipped as pruned trials, never trained)" if s.impossible or s.too_large else ""))
    for reason, n in s.reasons:
        console.print(f"  {n} x {reason}")
    if s.impossible + s.too_large == s.samples:
        console.print("[bold red]every sampled architecture is impossible[/]: lower depth or strides, or raise "
                      "max_params")
    t_spec = loaded.spec.train
    jit = "auto" if t_spec.jit_compile == "auto" else ("on" if t_spec.jit_compile else "off")
    console.print(f"training: Keras on {t_spec.backend} (in a worker process), precision {t_spec.precision}, "
                  f"XLA {jit}")
    s_spec = loaded.spec.search
    if len(s_spec.objectives) > 1 or s_spec.constraints:
        goals = ", ".join(f"{o.metric} ({o.resolved_direction})" for o in s_spec.objectives)
        console.print(f"objectives: {goals}; pruner {s_spec.pruner}, sampler {s_spec.sampler}"
                      + (f"; constraints: {', '.join(f'{m} {b}' for m, b in s_spec.constraints.items())}"
                         if s_spec.constraints else ""))
    if s_spec.measured:
        console.print(f"measured on each finished trial's TFLite {s_spec.measure_on} artifact: "
                      f"{', '.join(sorted(s_spec.measured))} (seconds per trial, shown as measure_s)")
    for line in outputs:
        console.print(line, soft_wrap=True)  # paths and URIs stay whole, copyable
    check_static_constraints(loaded, space, data)
    return s
