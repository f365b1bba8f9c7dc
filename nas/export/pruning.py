"""Magnitude weight pruning, native to Keras 3 (tensorflow-model-optimization rejects Keras 3 models).

Each Conv2D/Dense kernel gets a mask variable that lives *outside* the model and is applied through the
kernel variable's `constraint`, which Keras' optimizer re-applies after every update inside the compiled
train step, so pruned weights stay exactly zero. A callback raises the sparsity along a polynomial
schedule (Zhu & Gupta) to the target while fine-tuning. `strip()` bakes the zeros in and removes the
constraints: the saved model is plain Keras with zeros in it and no extra variables.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops


class _Mask(keras.constraints.Constraint):
    def __init__(self, mask: keras.Variable):
        self.mask = mask

    def __call__(self, w):  # type: ignore[no-untyped-def]
        return w * ops.cast(self.mask, w.dtype)


def prunable(model: keras.Model) -> list[keras.layers.Layer]:
    """The Conv2D and Dense layers of `model`, also inside a nested model (the training wrapper of nas.augment)."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += prunable(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            found.append(layer)
    return found


@dataclass(frozen=True)
class Schedule:
    """Polynomial sparsity ramp: s(t) = final * (1 - (1 - t/T)^power) for t in [begin, end] steps."""

    final: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 20  # steps between mask updates

    def at(self, step: int) -> float:
        if step <= self.begin_step:
            return 0.0
        if step >= self.end_step:
            return self.final
        progress = (step - self.begin_step) / max(1, self.end_step - self.begin_step)
        ramp: float = (1.0 - progress) ** self.power
        return self.final * (1.0 - ramp)


class MagnitudePruning(keras.callbacks.Callback):
    """Attach masks on train begin; every `frequency` steps zero the smallest-magnitude weights of each
    kernel up to the scheduled sparsity (layer-wise, so no layer is wiped out by a global threshold)."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule
        self.masks: dict[str, keras.Variable] = {}
        self.step = 0

    def on_train_begin(self, logs=None):  # type: ignore[no-untyped-def]
        for layer in prunable(self.model):
            if layer.name not in self.masks:
                mask = keras.Variable(np.ones(layer.kernel.shape, "float32"), trainable=False,
                                      name=f"{layer.name}_prune_mask")
                self.masks[layer.name] = mask
                layer.kernel.constraint = _Mask(mask)

    def on_train_batch_begin(self, batch, logs=None):  # type: ignore[no-untyped-def]
        if self.step % self.schedule.frequency == 0 or self.step == self.schedule.end_step:
            self._update(self.schedule.at(self.step))
        self.step += 1

    def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
        self._update(self.schedule.final)  # land exactly on the target, whatever the step count

    def _update(self, sparsity: float) -> None:
        for layer in prunable(self.model):
            w = np.abs(ops.convert_to_numpy(layer.kernel))
            k = int(round(sparsity * w.size))
            mask = np.ones(w.size, "float32")
            if k > 0:
                mask[np.argsort(w, axis=None, kind="stable")[:k]] = 0.0  # exact count, ties broken stably
            mask = mask.reshape(w.shape)
            self.masks[layer.name].assign(mask)
            layer.kernel.assign(ops.convert_to_numpy(layer.kernel) * mask)


def strip(model: keras.Model) -> None:
    """Bake the masks into the kernels and remove the constraints (in place)."""
    for layer in prunable(model):
        constraint = layer.kernel.constraint
        if isinstance(constraint, _Mask):
            layer.kernel.assign(ops.convert_to_numpy(layer.kernel) * ops.convert_to_numpy(constraint.mask))
            layer.kernel.constraint = None
    # The compiled train step captured the constraints when it was traced: drop it so later training
    # (if any) retraces without the masks.
    model.train_function = None


def sparsity_report(model: keras.Model) -> dict[str, object]:
    """Achieved sparsity per prunable kernel and overall (zeros / weights, kernels only; biases excluded)."""
    per_layer, zeros, total = {}, 0, 0
    for layer in prunable(model):
        w = ops.convert_to_numpy(layer.kernel)
        z = int((w == 0).sum())
        per_layer[layer.name] = round(z / w.size, 4)
        zeros, total = zeros + z, total + w.size
    return {"overall": round(zeros / total, 4) if total else 0.0, "per_layer": per_layer,
            "kernel_weights": total, "zero_weights": zeros}
