"""pruner pareto: early stopping that is fair to small models, for one objective or several.

A multi-objective search trades accuracy for cost, so a small model must never be pruned for being less
accurate than a large one (and Optuna's own pruners refuse multi-objective studies). The rule: at each epoch
from search.warmup_epochs on (as Optuna's median pruner), a trial is compared only with the trials that are
no larger in every cost known before training (parameters and FLOPs, which also stand in for latency and size,
measured only when a trial finishes). It is pruned when its accuracy objective at that epoch is worse than the
median of theirs at the same epoch, once at least MIN_PEERS of them got there (finished, pruned or still
running: promotion-free and asynchronous, so parallel workers do not wait on each other). The cheapest trial
so far has no peers and always trains on; a large trial that trails cheaper ones is stopped.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState as OptunaState

from nas.spec.model import Objective

CURVE = "nas.curve"  # user attr: {epoch: the watched metric}, written after each epoch
MIN_PEERS = 2


@dataclass(frozen=True)
class ParetoPruner:
    metric: str  # the per-epoch metric watched: val_accuracy or val_loss
    direction: str
    warmup_epochs: int
    startup_trials: int

    @classmethod
    def for_objectives(cls, objectives: list[Objective], warmup_epochs: int,
                       startup_trials: int) -> ParetoPruner | None:
        """Watches the first objective training moves; int8_val_accuracy through val_accuracy (it is measured only
        once the trial ends). None when no objective does (params, flops, latency and size alone)."""
        for o in objectives:
            if o.metric in ("val_accuracy", "val_loss", "int8_val_accuracy"):
                metric = "val_accuracy" if o.metric == "int8_val_accuracy" else o.metric
                return cls(metric, o.resolved_direction, warmup_epochs, startup_trials)
        return None

    def decide(self, study: optuna.Study, number: int, epoch: int, value: float, costs: dict[str, float]) -> str | None:
        """The reason to prune trial `number` at `epoch`, or None to let it train on."""
        if epoch < max(1, self.warmup_epochs) or not math.isfinite(value) or not costs:
            return None
        trials = study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED,
                                                            OptunaState.RUNNING))
        if sum(t.state == OptunaState.COMPLETE for t in trials) < self.startup_trials:
            return None
        peers = [v for t in trials if t.number != number
                 and (v := _at(t.user_attrs, epoch)) is not None and _no_larger(t.user_attrs, costs)]
        if len(peers) < MIN_PEERS:
            return None
        median = statistics.median(peers)
        if (value < median) if self.direction == "maximize" else (value > median):
            return (f"pruned at epoch {epoch}: {self.metric} {value:.4f} trails the median {median:.4f} of the "
                    f"{len(peers)} trials no larger (params and FLOPs) at that epoch")
        return None


def _at(attrs: dict[str, Any], epoch: int) -> float | None:
    v = attrs.get(CURVE, {}).get(str(epoch))
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _no_larger(attrs: dict[str, Any], costs: dict[str, float]) -> bool:
    return all(isinstance(attrs.get(c), (int, float)) and attrs[c] <= v for c, v in costs.items())
