"""`nas validate`: check a spec and its data, show the space, and survey which shapes are impossible."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from nas.arch import plan
from nas.errors import InvalidArchitecture
from nas.space import DataInfo, SearchSpace
from nas.spec.dims import Choice, describe
from nas.spec.loader import LoadedSpec

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


def _trainable_params(space: SearchSpace, data: DataInfo, params: dict[str, Any]) -> int | None:
    try:
        p = plan(space.decode(params, data).arch).params
    except InvalidArchitecture:
        return None
    limit = space.spec.space.max_params
    return None if limit and p > limit else p


def _extreme(space: SearchSpace, data: DataInfo, start: dict[str, Any], sign: int) -> int:
    """Coordinate search from the most extreme sample: move one dimension at a time to its end values
    while the model stays trainable. Finds the true extremes of monotone spaces, near them otherwise."""
    params, best = dict(start), _trainable_params(space, data, start) or 0
    for _ in range(4):
        improved = False
        for name, d in space.dims.items():
            options = d.values if isinstance(d, Choice) else (d.low, d.high)  # type: ignore[union-attr]
            for value in options:
                p = _trainable_params(space, data, {**params, name: value})
                if p is not None and sign * p > sign * best:
                    params, best, improved = {**params, name: value}, p, True
        if not improved:
            break
    return best


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


def report(loaded: LoadedSpec, data: DataInfo, description: str, split_sizes: tuple[int, int, int],
           console: Console) -> Survey:
    space = SearchSpace(loaded.spec)
    t = Table(title=f"search space of {loaded.spec.name!r} ({len(space.dims)} searched dimensions)", title_justify="left")
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
        console.print("[bold red]every sampled architecture is impossible[/]: lower depth or strides, or raise max_params")
    return s
