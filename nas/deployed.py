"""What a trial's model costs where it ships, measured in the worker right after the trial finishes.

The model at its best epoch is exported and converted to TFLite as `nas export` does (int8 calibrated on
training images, or float32: `search.measure_on`), then run in LiteRT: `latency_ms` is the batch-1 median
after warm-up, `size_kb` the gzipped artifact (what a download or a flash image costs), `int8_val_accuracy`
the int8 artifact's accuracy on the validation split, so a search can prefer architectures that survive
quantization. Pruned and failed trials never pay for it; `measure_s` says what it cost.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import keras

from nas.data.splits import Splits

LATENCY_RUNS = 100  # timed batch-1 invocations per trial (after 10 warm-up runs); the export times more


def measure(model: keras.Model, splits: Splits, need: Collection[str], *, on: str = "int8",
            calibration_samples: int = 200, seed: int = 0) -> dict[str, float]:
    """`model` (float32, best weights) -> the measured metrics in `need` (and what else its artifacts give for
    free), plus measure_s."""
    from nas.export.convert import export_saved_model, to_tflite
    from nas.export.measure import THREADS, _latency, _Tflite, predict_tflite

    started = time.perf_counter()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nas-measure-") as tmp:
        saved = export_saved_model(model, Path(tmp))
        int8 = None
        if on == "int8" or "int8_val_accuracy" in need:
            int8 = to_tflite(saved, "tflite-int8", Path(tmp), calibration=splits.train.x,
                             samples=calibration_samples, seed=seed)
        target = int8 if on == "int8" and int8 is not None else to_tflite(saved, "tflite-float32", Path(tmp))
        out["size_kb"] = len(gzip.compress(target.read_bytes(), compresslevel=9)) / 1024
        # every core, as the export manifest measures; a --workers worker its share of them (nas.parallel)
        one = _Tflite(target, 1, threads=int(os.environ.get("OMP_NUM_THREADS") or 0) or THREADS)
        out["latency_ms"] = _latency(one.run, one.prepare(splits.val.x.astype("float32")), LATENCY_RUNS)
        if int8 is not None:
            out["int8_val_accuracy"] = float((predict_tflite(int8, splits.val.x) == splits.val.y).mean())
    out["measure_s"] = time.perf_counter() - started
    return out

