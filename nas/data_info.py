"""Load a spec's data once, check the spec fits it, and describe it (shape, classes, splits).

Used by `nas validate`, `nas search` and `nas export`, so all three refuse the same mistakes the same way,
before any training.
"""

from __future__ import annotations

import re

from nas.data.sources import load_source
from nas.data.splits import Splits, make_splits
from nas.errors import DataError
from nas.space import DataInfo
from nas.spec.dims import Choice, Dim, Fixed, FloatRange, IntRange
from nas.spec.loader import LoadedSpec


def load_splits(loaded: LoadedSpec) -> tuple[Splits, DataInfo, str]:
    """(splits, what the builder needs to know, a one-line description of the source)."""
    d = loaded.spec.data
    try:
        raw = load_source(d.source, loaded.base_dir, image_size=d.image_size, color_mode=d.color_mode)
        splits = make_splits(raw, validation_fraction=d.validation_fraction, test_fraction=d.test_fraction,
                             seed=d.split_seed)  # never search.seed: the test split must not move between searches
    except DataError as exc:
        raise DataError(_located(loaded, str(exc))) from None
    info = DataInfo(
        input_shape=tuple(int(v) for v in splits.train.x.shape[1:]),  # type: ignore[arg-type]
        num_classes=len(raw.class_names),
        pixel_max=float(d.pixel_max or raw.pixel_max),
        class_names=tuple(raw.class_names),
    )
    check_spec_fits_data(loaded, info, len(splits.train.y))
    return splits, info, raw.description


def _located(loaded: LoadedSpec, message: str) -> str:
    """Prefix a data message that starts with its key ("data.source 'x': ...") with the spec file and line."""
    m = re.match(r"(data\.[a-z_]+)(?:[ =:])", message)
    if not m:
        return f"{loaded.shown or loaded.path}: {message}"
    return f"{loaded.where(m.group(1)).removesuffix(m.group(1))}{message}"


def _largest(d: Dim) -> float:
    if isinstance(d, Fixed):
        return float(d.value)
    if isinstance(d, Choice):
        return float(max(d.values))
    assert isinstance(d, (IntRange, FloatRange))
    return float(d.high)


def check_spec_fits_data(loaded: LoadedSpec, info: DataInfo, train_samples: int) -> None:
    """Spec values that every trial would get wrong on this data: say so now, not after an hour of trials."""
    spec = loaded.spec
    h, w, _ = info.input_shape
    problems = []
    kernel = int(_largest(spec.space.kernel_size))
    if kernel > min(h, w):
        problems.append(
            f"{loaded.where('space.kernel_size')}: kernel size {kernel} is larger than the {h}x{w} input images, "
            f"so most of each kernel would only ever see padding; use kernel sizes <= {min(h, w)}.")
    batch = int(_largest(spec.train.batch_size))
    if batch > train_samples:
        problems.append(
            f"{loaded.where('train.batch_size')}: batch size {batch} is more than the {train_samples} training "
            f"samples left after the validation and test splits, so every epoch would be one partial batch; use "
            f"batch sizes <= {train_samples}, or add data.")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DataError("\n".join(problems) if len(problems) == 1 else
                        f"{len(problems)} problems with the spec on this data:\n{listed}")
