"""Turn a Keras model into deployable artifacts: SavedModel, TFLite (four precisions) and ONNX.

Quantization goes through the TFLite converter from an exported SavedModel, because Keras' own
`model.quantize` skips Conv2D. Each converter is independent: one failing never stops the others.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np

from nas.tf_setup import silenced_stderr

TFLITE_MODES = ("tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8")
FORMATS = ("keras", "saved_model", *TFLITE_MODES, "onnx")


def save_keras(model: keras.Model, out: Path) -> Path:
    path = out / "model.keras"
    model.save(path)
    return path


def export_saved_model(model: keras.Model, out: Path) -> Path:
    path = out / "saved_model"
    with silenced_stderr():
        model.export(str(path), format="tf_saved_model", verbose=False)
    return path


def representative(x: np.ndarray, samples: int, seed: int) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Calibration images for full-integer quantization: a seeded draw from the training data."""
    idx = np.random.default_rng(seed).choice(len(x), size=min(samples, len(x)), replace=False)

    def gen() -> Iterator[list[np.ndarray]]:
        for i in idx:
            yield [x[i : i + 1].astype("float32")]

    return gen


def to_tflite(saved_model: Path, mode: str, out: Path, *, calibration: np.ndarray | None = None,
              samples: int = 200, seed: int = 0, int8_io: bool = True) -> Path:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode == "tflite-float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "tflite-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "tflite-int8":
        if calibration is None:
            raise ValueError("int8 quantization needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative(calibration, samples, seed)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif mode != "tflite-float32":
        raise ValueError(f"unknown TFLite mode {mode!r}")
    with silenced_stderr():
        blob = converter.convert()
    path = out / f"model_{mode.removeprefix('tflite-')}.tflite"
    path.write_bytes(blob)
    return path


def to_onnx(model: keras.Model, out: Path, opset: int = 17) -> Path:
    if keras.backend.backend() != "tensorflow":  # without TensorFlow: Keras' own exporter (torch.onnx, jax2onnx)
        path = out / "model.onnx"
        if keras.backend.backend() == "jax" and importlib.util.find_spec("jax2onnx") is None:
            raise RuntimeError("ONNX from a JAX model needs TensorFlow (tf2onnx) or jax2onnx, and neither is "
                               "installed; pip install tensorflow==2.21.0")
        with silenced_stderr():
            model.export(str(path), format="onnx", verbose=False, opset_version=opset)
        return path
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image"),)
    path = out / "model.onnx"
    with silenced_stderr():
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
    return path
