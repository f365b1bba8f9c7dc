"""Measure each artifact in its own runtime: held-out accuracy, top-1 agreement with Keras, batch-1 latency.

TFLite models run in the ai-edge-litert interpreter, ONNX models in onnxruntime, the SavedModel through its
serving signature: what a user deploys is what gets measured, not the Keras model it came from.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class Measurement:
    test_accuracy: float
    top1_agreement: float | None  # share of test images where the top class equals the Keras model's
    latency_ms_median: float  # batch 1, this machine
    predictions: np.ndarray  # top-1 class per test image


def _latency(run_one: Callable[[np.ndarray], object], x: np.ndarray, runs: int) -> float:
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(x), size=runs + 10)
    times = []
    for n, i in enumerate(picks):
        sample = x[i : i + 1]
        t0 = time.perf_counter()
        run_one(sample)
        if n >= 10:  # warm-up excluded
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _measurement(pred: np.ndarray, y: np.ndarray, reference: np.ndarray | None, latency: float) -> Measurement:
    agreement = float((pred == reference).mean()) if reference is not None else None
    return Measurement(float((pred == y).mean()), agreement, latency, pred)


def measure_keras(model, x: np.ndarray, y: np.ndarray, runs: int) -> Measurement:  # type: ignore[no-untyped-def]
    import keras

    pred = model.predict(x.astype("float32"), batch_size=256, verbose=0).argmax(axis=1)
    if keras.backend.backend() != "tensorflow":  # JAX or PyTorch, where TensorFlow is not installed
        latency = _latency(lambda s: model(s.astype("float32"), training=False), x, runs)
        return _measurement(pred, y, None, latency)
    import tensorflow as tf

    serve = tf.function(lambda t: model(t, training=False))  # the fastest plain-Keras batch-1 path
    latency = _latency(lambda s: serve(tf.constant(s, tf.float32)), x, runs)
    return _measurement(pred, y, None, latency)


def measure_saved_model(path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray, runs: int) -> Measurement:
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    key = next(iter(fn.structured_outputs))
    preds = [fn(tf.constant(x[i : i + 256], tf.float32))[key].numpy().argmax(axis=1) for i in range(0, len(x), 256)]
    latency = _latency(lambda s: fn(tf.constant(s, tf.float32)), x, runs)
    return _measurement(np.concatenate(preds), y, reference, latency)


class _Tflite:
    """A LiteRT interpreter that takes float raw pixels and handles int8 I/O quantization itself."""

    def __init__(self, path: Path, batch: int, threads: int = THREADS):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        inp = self.interpreter.get_input_details()[0]
        if batch != inp["shape"][0]:
            self.interpreter.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]])
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Raw float pixels -> the model's input dtype (int8 input: quantized as the manifest documents)."""
        dtype = self.inp["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return x.astype(dtype)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.inp["index"], prepared)
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.out["index"]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(self.prepare(x))


def predict_tflite(path: Path, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Top-1 class per image: full batches, then the remainder one image at a time."""
    full = len(x) - len(x) % batch
    preds = []
    if full:
        many = _Tflite(path, batch)
        preds += [many(x[i : i + batch].astype("float32")).argmax(axis=1) for i in range(0, full, batch)]
    one = _Tflite(path, 1)
    preds += [one(x[i : i + 1].astype("float32")).argmax(axis=1) for i in range(full, len(x))]
    return np.concatenate(preds)


def measure_tflite(path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray, runs: int) -> Measurement:
    preds = predict_tflite(path, x)
    one = _Tflite(path, 1)
    prepared = one.prepare(x.astype("float32"))  # input quantization is the caller's, not the model's, time
    latency = _latency(one.run, prepared, runs)
    return _measurement(preds, y, reference, latency)


def measure_onnx(path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray, runs: int) -> Measurement:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preds = [session.run(None, {name: x[i : i + 256].astype("float32")})[0].argmax(axis=1)
             for i in range(0, len(x), 256)]
    latency = _latency(lambda s: session.run(None, {name: s.astype("float32")}), x, runs)
    return _measurement(np.concatenate(preds), y, reference, latency)


def tflite_input_contract(path: Path) -> dict[str, object]:
    """How to feed the model: dtype, and for int8 input the quantization to apply to raw pixels."""
    from ai_edge_litert.interpreter import Interpreter

    inp = Interpreter(model_path=str(path)).get_input_details()[0]
    contract: dict[str, object] = {"dtype": np.dtype(inp["dtype"]).name, "shape": [int(v) for v in inp["shape"]]}
    scale, zero = inp["quantization"]
    if scale:
        contract["quantization"] = {"scale": float(scale), "zero_point": int(zero),
                                    "formula": "int8 = clip(round(raw_pixel / scale + zero_point), -128, 127)"}
    return contract
