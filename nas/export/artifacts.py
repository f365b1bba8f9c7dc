"""Produce each requested artifact and measure it; a failure is recorded, never fatal to the others."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from nas.export import convert, measure
from nas.tf_setup import silenced_stderr

RUNTIMES = {"keras": "keras", "saved_model": "tensorflow (serving signature)", "onnx": "onnxruntime"}


#: what an export skips where TensorFlow is not installed (a JAX or PyTorch machine): the SavedModel and TFLite
NEEDS_TENSORFLOW = ("saved_model", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8")


def build_artifacts(model: Any, formats: tuple[str, ...], out: Path, x_calib: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, cfg: Any, seed: int, console: Console, tensorflow: bool = True
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every format in `formats`, measured. Without `tensorflow` (installed), those that need it are recorded as
    skipped, with how to get them, and the rest are made on the model's own framework."""
    from nas.export.pipeline import _digest

    skipped = {f: {"status": "skipped", "error": "needs TensorFlow, which is not installed here; pip install "
                   "tensorflow==2.21.0 and rerun `nas export` (or export on a machine that has it)"}
               for f in formats if not tensorflow and f in NEEDS_TENSORFLOW}
    formats = tuple(f for f in formats if f not in skipped)

    runs = cfg.latency_runs
    with console.status("measuring the Keras model"), silenced_stderr():
        ref = measure.measure_keras(model, x_test, y_test, runs)
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, make: Callable[[], Path], run: Callable[[Path], measure.Measurement]) -> None:
        with console.status(f"{name}: converting and measuring"), silenced_stderr():
            path: Path | None = None
            try:
                path = make()
                m = run(path)
                sha, size, gz = _digest(path)
                results[name] = {
                    "status": "ok", "path": path.name, "sha256": sha, "bytes": size, "gzip_bytes": gz,
                    "runtime": RUNTIMES.get(name, "ai-edge-litert interpreter"),
                    "test_accuracy": m.test_accuracy, "top1_agreement": m.top1_agreement,
                    "latency_ms_median": round(m.latency_ms_median, 4),
                }
                if name.startswith("tflite-"):
                    results[name]["input"] = measure.tflite_input_contract(path)
            except Exception as exc:  # one failing converter never loses the others
                results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"}
                if path is not None and path.is_file():  # converted but unusable (tf2onnx's Erfc for GELU): not shipped
                    path.unlink()
                    results[name]["removed"] = path.name

    if "keras" in formats:
        record("keras", lambda: convert.save_keras(model, out),
               lambda p: measure.Measurement(ref.test_accuracy, 1.0, ref.latency_ms_median, ref.predictions))
    tflite = [f for f in formats if f.startswith("tflite-")]
    scratch = None
    saved: Path | None = None
    if "saved_model" in formats or tflite:
        target = out if "saved_model" in formats else Path(scratch := tempfile.mkdtemp(prefix="nas-export-"))
        try:
            saved = convert.export_saved_model(model, target)
        except Exception as exc:
            err = {"status": "failed", "error": f"SavedModel export failed: {type(exc).__name__}: {exc}"}
            results.update({f: dict(err) for f in formats if f == "saved_model" or f.startswith("tflite-")})
    if saved is not None and "saved_model" in formats:
        record("saved_model", lambda: saved,
               lambda p: measure.measure_saved_model(p, x_test, y_test, ref.predictions, runs))
    for mode in tflite if saved is not None else []:
        assert saved is not None  # the loop runs only then
        record(mode, partial(convert.to_tflite, saved, mode, out, calibration=x_calib,
                             samples=cfg.calibration_samples, seed=seed, int8_io=cfg.int8_io),
               lambda p: measure.measure_tflite(p, x_test, y_test, ref.predictions, runs))
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    if "onnx" in formats:
        record("onnx", lambda: convert.to_onnx(model, out),
               lambda p: measure.measure_onnx(p, x_test, y_test, ref.predictions, runs))
    results.update(skipped)
    called = "through tf.function" if tensorflow else "directly (no TensorFlow here)"
    reference = {"test_accuracy": ref.test_accuracy, "latency_ms_median": round(ref.latency_ms_median, 4),
                 "note": f"the float Keras model in memory, called {called}, batch 1; top1_agreement "
                         "and latency ratios in this manifest are against it"}
    return results, reference
