"""Load a spec's data once and describe it (shape, classes, splits) for the search and `nas validate`."""

from __future__ import annotations

from nas.data.sources import load_source
from nas.data.splits import Splits, make_splits
from nas.space import DataInfo
from nas.spec.loader import LoadedSpec


def load_splits(loaded: LoadedSpec) -> tuple[Splits, DataInfo, str]:
    """(splits, what the builder needs to know, a one-line description of the source)."""
    d = loaded.spec.data
    raw = load_source(d.source, loaded.base_dir, image_size=d.image_size, color_mode=d.color_mode)
    splits = make_splits(raw, validation_fraction=d.validation_fraction, test_fraction=d.test_fraction,
                         seed=loaded.spec.search.seed)
    info = DataInfo(
        input_shape=tuple(int(v) for v in splits.train.x.shape[1:]),  # type: ignore[arg-type]
        num_classes=len(raw.class_names),
        pixel_max=float(d.pixel_max or raw.pixel_max),
        class_names=tuple(raw.class_names),
    )
    return splits, info, raw.description
