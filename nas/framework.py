"""The Keras framework trials train on: TensorFlow, JAX or PyTorch (`train.backend` in the spec).

"Framework" here, never "backend", in names: in nas a backend is the search engine (nas.backends: Optuna or
KerasTuner). Keras fixes its framework once per process, when it is first imported, from KERAS_BACKEND; so the
trial worker sets it before importing Keras (`prepare`), and the search process itself imports no framework for
training. Everything framework-specific about setting up a process lives here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any

from nas.errors import NasError

FRAMEWORKS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
#: what to install for each, named in the error when it is missing
INSTALL = {"tensorflow": "pip install tensorflow (nas depends on it)", "jax": "pip install 'nas[jax]'",
           "torch": "pip install 'nas[torch]'"}


def installed(framework: str) -> bool:
    return importlib.util.find_spec(framework) is not None


def require(framework: str, where: str = "train.backend") -> None:
    """A clear error, before any worker starts, when `framework` cannot be imported here."""
    if framework not in FRAMEWORKS:
        raise NasError(f"{where}: unknown Keras framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    if not installed(framework):
        raise NasError(f"{where} is {framework!r}, but {framework} is not installed in this environment "
                       f"({sys.executable}); {INSTALL[framework]}, or set {where}: tensorflow")


def loaded() -> str | None:
    """The framework Keras runs on in this process, or None while Keras is not imported yet."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    return str(keras.backend.backend())


#: train.jit_compile for the trials of this process ("auto", True or False), and its device, set by `prepare`
_jit_compile: bool | str = "auto"
_device = "CPU"


def jit_compile() -> bool | str:
    return _jit_compile


def where() -> str:
    """For an out-of-memory message: ' on GPU n' (n as nvidia-smi numbers it, through CUDA_VISIBLE_DEVICES) when
    trials train on a GPU, else nothing."""
    if not _device.startswith("GPU"):
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return f" on GPU {visible or _device.split(':')[-1]}"


@dataclass(frozen=True)
class Setup:
    """How a trial process trains, fixed per process: the spec's train.backend, deterministic, precision and
    jit_compile; and `threads`, the CPU threads it may use (None: the framework's default, all cores), set when
    several workers share the CPU (nas.parallel)."""

    framework: str = DEFAULT
    deterministic: bool = True
    precision: str = "auto"
    jit_compile: bool | str = "auto"
    threads: int | None = None

    @classmethod
    def of(cls, train: Any) -> Setup:  # a TrainSpec
        return cls(train.backend, train.deterministic, train.precision, train.jit_compile)


DEFAULT_SETUP = Setup()


def prepare(setup: Setup) -> str:
    """Set this process up to train on `framework`, before Keras is imported: quiet imports, GPU memory shared
    with other workers, determinism when asked, Keras' dtype policy for `precision` (`policy_for`), and XLA for
    `jit_compile` (Keras' own "auto": on for JAX and for TensorFlow on a GPU, off on a CPU and for PyTorch).
    Returns the device trials run on ("GPU:0" or "CPU")."""
    framework = setup.framework
    current = loaded()
    if current is not None and current != framework:
        raise NasError(f"this process already runs Keras on {current}, so it cannot train on {framework}; "
                       f"drop --inline (trials then run in a worker process of their own), or start nas with "
                       f"KERAS_BACKEND={framework}")
    os.environ["KERAS_BACKEND"] = framework
    if setup.threads:  # OpenMP/MKL pools (PyTorch's CPU kernels, oneDNN) read these when they start
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(setup.threads)
    if framework == "tensorflow":
        from nas.tf_setup import prepare_tensorflow

        device = prepare_tensorflow(setup.deterministic, setup.threads)
    elif framework == "jax":
        device = _prepare_jax(setup.deterministic, setup.threads)
    else:
        device = _prepare_torch(setup.deterministic, setup.threads)
    import keras

    if framework != "tensorflow":
        # Keras seeds TensorFlow too whenever it is installed (set_random_seed), which would import all of it
        # into a JAX or PyTorch worker: seconds per worker and hundreds of MB. Tell Keras it is not there, as
        # on a machine without TensorFlow (nas uses no tf.data on these frameworks).
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    global _jit_compile, _device
    _jit_compile, _device = setup.jit_compile, device
    keras.config.set_dtype_policy(policy_for(setup.precision, device, framework))
    return device


def policy_for(precision: str, device: str, framework: str) -> str:
    """Keras' dtype policy for `train.precision`: auto is mixed precision on a GPU and float32 on a CPU; mixed is
    bfloat16 where the device computes it natively (CPUs, NVIDIA Ampere and newer), else float16 (which Keras
    then trains with loss scaling). Variables stay float32 under every policy."""
    if precision == "float32" or (precision == "auto" and not device.startswith("GPU")):
        return "float32"
    if not device.startswith("GPU") or _gpu_has_bfloat16(framework):
        return "mixed_bfloat16"
    return "mixed_float16"


def _gpu_has_bfloat16(framework: str) -> bool:
    try:
        if framework == "torch":
            import torch

            return bool(torch.cuda.is_bf16_supported())
        if framework == "jax":
            import jax

            return float(getattr(jax.devices()[0], "compute_capability", "0") or 0) >= 8.0
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    except Exception:  # unknown device: float16 runs everywhere CUDA does
        return False


def _xla_flag(flag: str) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if flag.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


def _prepare_jax(deterministic: bool, threads: int | None = None) -> str:
    # JAX grabs 75% of a GPU's memory at start-up by default; workers sharing a GPU (and TensorFlow's own
    # memory growth, for parity) need it allocated on demand instead.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if deterministic:  # XLA's GPU reductions are not deterministic unless asked; the CPU is
        _xla_flag("--xla_gpu_deterministic_ops=true")
    if threads:  # XLA's CPU client sizes its Eigen pool from this flag, read when JAX starts
        _xla_flag(f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}")
        _xla_flag(f"intra_op_parallelism_threads={threads}")
    import jax

    return "GPU:0" if any(d.platform == "gpu" for d in jax.devices()) else "CPU"


def _prepare_torch(deterministic: bool, threads: int | None = None) -> str:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
    import torch

    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)  # only before PyTorch's first parallel work: this is that

    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return "GPU:0" if torch.cuda.is_available() else "CPU"


def rng_state() -> list[Any]:
    """The framework's global random-generator states, as numpy arrays, for a checkpoint: PyTorch's (CPU, and
    each GPU's), which Keras' dropout draws from on PyTorch when a layer has no seed of its own. Nothing on
    TensorFlow and JAX, where every random layer keeps its state in a variable of the model."""
    if loaded() != "torch":
        return []
    import torch

    states = [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    return [s.numpy().copy() for s in states]


def set_rng_state(states: list[Any]) -> None:
    if not states or loaded() != "torch":
        return
    import torch

    torch.set_rng_state(torch.from_numpy(states[0]))
    if len(states) > 1 and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(s) for s in states[1:]])


def release_memory() -> None:
    """Hand a finished trial's cached device memory back (PyTorch keeps it cached otherwise)."""
    if loaded() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
