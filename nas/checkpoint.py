"""A trial's whole training state at the end of an epoch, so that it can continue later exactly.

What a promoted trial needs to go on as if it had never stopped: every variable of the training model (weights,
batch-norm statistics, and the seed-generator states of dropout and augmentation), every optimizer variable
(its step count drives the learning-rate schedule), the framework's global random state where layers draw from
it (PyTorch's dropout does, for layers without an explicit seed), and the trial's own bookkeeping (curve so far,
best epoch and its weights, early-stopping count). With the epoch-indexed data order of nas.data.pipeline that
is all there is: a trial resumed from epoch e ends with the weights of one trained straight through (same seed,
same framework).

One .npz file, written to a temporary name and renamed: a kill never leaves half a checkpoint. Variables are
matched by position and shape, not by name: Keras numbers its auto-names per process, and a recycled worker
has built other models before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas import framework as fw

FORMAT = 1


@dataclass
class Checkpoint:
    epoch: int  # epochs trained so far; training goes on with epoch `epoch` (0-based)
    variables: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray] | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # history, best, best_epoch, since_best
    rng: list[np.ndarray] = field(default_factory=list)  # the framework's global generator state (nas.framework)


def save(path: str | Path, trainer: Any, *, epoch: int, best_weights: list[Any] | None,
         progress: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    for prefix, values in (("v", [v.numpy() for v in trainer.variables]),
                           ("o", [v.numpy() for v in trainer.optimizer.variables]),
                           ("b", best_weights or []), ("r", fw.rng_state())):
        arrays.update({f"{prefix}{i}": np.asarray(a) for i, a in enumerate(values)})
    meta = {"format": FORMAT, "epoch": epoch, "has_best": best_weights is not None, "progress": progress}
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Checkpoint:
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")

        def series(prefix: str) -> list[np.ndarray]:
            return [z[f"{prefix}{i}"] for i in range(sum(1 for k in z.files if k[:1] == prefix and k[1:].isdigit()))]

        return Checkpoint(epoch=int(meta["epoch"]), variables=series("v"), optimizer=series("o"),
                          best_weights=series("b") if meta["has_best"] else None, progress=meta["progress"],
                          rng=series("r"))


def read_progress(path: str | Path) -> dict[str, Any]:
    """The bookkeeping alone (curve, best epoch), without loading the arrays: for the search process."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    return {"epoch": meta["epoch"], **meta["progress"]}


def restore(trainer: Any, ckpt: Checkpoint) -> None:
    """Load `ckpt` into a freshly built and compiled training model of the same candidate."""
    if not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)
    for what, variables, values in (("model", trainer.variables, ckpt.variables),
                                    ("optimizer", trainer.optimizer.variables, ckpt.optimizer)):
        if len(variables) != len(values):
            raise ValueError(f"the checkpoint holds {len(values)} {what} variables, the model has {len(variables)}: "
                             "it was written for another candidate")
        for var, value in zip(variables, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise ValueError(f"checkpoint {what} variable of shape {value.shape} does not fit {var.path} "
                                 f"{tuple(var.shape)}: it was written for another candidate")
            var.assign(value)
