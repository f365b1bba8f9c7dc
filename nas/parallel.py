"""Several trials at once on one machine (`--workers N`): where each worker trains, and what they share.

Each worker is a trial worker process of its own (nas.worker.ProcessRunner) driven by a thread of the search
process; the threads share one Optuna study, one MLflow parent run and one live display. Training happens in
the worker processes, so the threads only wait on pipes and the database.

Placement: with G GPUs visible, worker i trains on GPU i mod G, set through CUDA_VISIBLE_DEVICES before its
framework starts (`--gpus 0,2` picks which). On a CPU the cores are divided between the workers, so N workers
do not oversubscribe them: TensorFlow's, XLA's or PyTorch's thread pools get cores // N threads each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from nas.errors import NasError


@dataclass(frozen=True)
class Place:
    """Where one worker trains: `gpu` (an index as nvidia-smi numbers it) or the CPU with `threads` threads."""

    index: int
    gpu: str | None = None
    threads: int | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.gpu} if self.gpu is not None else {}

    def describe(self) -> str:
        if self.gpu is not None:
            return f"GPU {self.gpu}"
        return f"CPU, {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "CPU"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU indices this process may use: CUDA_VISIBLE_DEVICES when set (the user's choice), else what
    `nvidia-smi -L` lists; none without an NVIDIA driver. No framework is imported for this."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def parse_gpus(raw: str | None, visible: list[str]) -> list[str] | None:
    """`--gpus 0,2` checked against the visible GPUs; None when not given."""
    if raw is None:
        return None
    wanted = [g.strip() for g in raw.split(",") if g.strip()]
    if not wanted:
        raise NasError(f"--gpus {raw!r}: expected GPU indices such as 0 or 0,2")
    if not visible:
        raise NasError(f"--gpus {raw}: no GPU is visible on this machine (nvidia-smi lists none"
                       + (f", CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                          if "CUDA_VISIBLE_DEVICES" in os.environ else "") + "); drop --gpus to train on the CPU")
    missing = [g for g in wanted if g not in visible]
    if missing:
        raise NasError(f"--gpus {raw}: GPU {', '.join(missing)} does not exist; the visible GPUs are "
                       f"{', '.join(visible)}")
    return wanted


def places(workers: int, gpus: list[str] | None = None, visible: list[str] | None = None,
           cores: int | None = None) -> list[Place]:
    """Where each of `workers` workers trains. One worker keeps the framework's defaults (all cores, or every
    GPU the framework sees, as before workers existed) unless --gpus names some."""
    if workers < 1:
        raise NasError(f"--workers {workers}: expected 1 or more")
    if workers == 1 and gpus is None:
        return [Place(0)]
    chosen = gpus if gpus is not None else (visible_gpus() if visible is None else visible)
    if chosen:
        return [Place(i, gpu=chosen[i % len(chosen)]) for i in range(workers)]
    override = os.environ.get("NAS_WORKER_THREADS")  # 0: every worker uses all cores (for benchmarks)
    threads = int(override) if override else max(1, (cores or cpu_cores()) // workers)
    return [Place(i, threads=threads or None) for i in range(workers)]


class Serialized:
    """Calls to `target`'s methods from several threads, one at a time: the MLflow client and the live display
    are used by every worker's thread, and neither promises thread safety. Their calls take milliseconds."""

    def __init__(self, target: Any):
        self._target = target
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call
