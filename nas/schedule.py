"""The learning-rate schedule of one fit: `train.schedule` over the fit's planned steps.

A schedule is a function of (optimizer step, planned total steps) alone, so a fit resumed at `initial_epoch`
gets the learning rate it would have had training straight through, once the optimizer's step count says
where it is (restored from a checkpoint, or set by `start_at_epoch`). Every schedule is a Keras
`CosineDecay`, a built-in: a saved model round-trips it, and loading one never needs nas.

    constant   lr (after an optional linear warm-up from 0)
    cosine     linear warm-up from 0 to lr over `warmup` of the steps, then cosine decay to 0 at the end
               (timm / big_vision / nanoGPT style; Keras' CosineDecay with warmup_target)
    one_cycle  from lr/25 up to lr over `warmup` of the steps (default 0.25, fastai's pct_start), then cosine
               annealing to lr/25/1e4 (PyTorch OneCycleLR's div_factor and final_div_factor). Unlike them
               the ramp is linear (Keras' warm-up) and momentum is not cycled.
"""

from __future__ import annotations

import math
from typing import Any

#: `train.warmup` when the spec leaves it out: the share of the planned steps spent ramping up
DEFAULT_WARMUP = {"constant": 0.0, "cosine": 0.05, "one_cycle": 0.25}
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 25.0, 1e4


def resolve_warmup(schedule: str, warmup: float | None) -> float:
    return DEFAULT_WARMUP[schedule] if warmup is None else float(warmup)


def learning_rate(schedule: str, lr: float, warmup: float, total_steps: int) -> Any:
    """The optimizer's `learning_rate`: a float for a plain constant rate, else a Keras CosineDecay."""
    import keras

    if schedule not in DEFAULT_WARMUP:
        raise ValueError(f"unknown train.schedule {schedule!r}; expected one of {', '.join(DEFAULT_WARMUP)}")
    total = max(1, int(total_steps))
    ramp = min(int(math.floor(warmup * total)), total - 1)
    decay = max(1, total - ramp)
    cosine = keras.optimizers.schedules.CosineDecay
    if schedule == "constant":
        if ramp == 0:
            return float(lr)
        return cosine(0.0, decay_steps=1, alpha=1.0, warmup_target=float(lr), warmup_steps=ramp)
    if schedule == "cosine":
        if ramp == 0:
            return cosine(float(lr), decay_steps=decay, alpha=0.0)
        return cosine(0.0, decay_steps=decay, alpha=0.0, warmup_target=float(lr), warmup_steps=ramp)
    return cosine(float(lr) / ONE_CYCLE_DIV, decay_steps=decay, alpha=1.0 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV),
                  warmup_target=float(lr), warmup_steps=ramp)


def start_at_epoch(optimizer: Any, initial_epoch: int, steps_per_epoch: int) -> None:
    """Put a fresh optimizer's step count where a fit starting at `initial_epoch` would have it, so its schedule
    continues rather than restarts. An optimizer restored from a checkpoint already counts that far."""
    if initial_epoch > 0 and int(optimizer.iterations) < initial_epoch * steps_per_epoch:
        optimizer.iterations.assign(initial_epoch * steps_per_epoch)
