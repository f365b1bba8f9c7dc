"""TensorFlow process setup in one place: a quiet import, GPU memory growth, determinism.

TF 2.21 prints absl/oneDNN/CUDA-probe lines straight to file descriptor 2 at import, and no environment
variable silences them any more; they would drown the progress display. We silence fd 2 only around the
import and device probe; Python exceptions still surface normally afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextmanager
def silenced_stderr() -> Iterator[None]:
    if os.environ.get("NAS_TF_VERBOSE"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def prepare_tensorflow(deterministic: bool, threads: int | None = None) -> str:
    """Import TF quietly, let GPUs grow memory on demand, optionally enable op determinism; `threads` bounds
    TensorFlow's CPU thread pools (set before its runtime starts, i.e. before the first op).

    Returns the device trials will run on ("GPU:0" or "CPU"). Set NAS_TF_VERBOSE=1 to see TF's own logs.
    """
    with silenced_stderr():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)  # leave room for other workers
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return "GPU:0" if gpus else "CPU"
