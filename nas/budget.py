"""The time budget of a search: what one epoch of a candidate costs here, and what the budget buys.

Before the first trial, a probe trains a few batches of the cheapest and the dearest candidates the space
holds (by FLOPs); the cost of any candidate's epoch is read off the line through those two points. From it
the plan says how many candidates the budget can look at, how many can reach full fidelity under the
pruner, and caps the FLOPs of a candidate so that no single full-fidelity trial eats more than half of
the budget. Framework-free: the probe itself runs where trials run (nas.train.probe, through the runner).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from nas.arch import plan
from nas.errors import InvalidArchitecture, NasError
from nas.space import Candidate, DataInfo, SearchSpace

#: no single full-fidelity trial may cost more than this share of the budget ("eat most of it")
MAX_TRIAL_SHARE = 0.5
#: candidates drawn from the space to find its cheapest and dearest ones (plan() only: no TensorFlow)
SURVEY = 300


@dataclass(frozen=True)
class Probe:
    flops: int  # per image, forward
    batch_size: int
    seconds_per_sample: float  # one training step over one image, augmentation included


def _fmt_time(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def extremes(space: SearchSpace, data: DataInfo, seed: int = 0, max_params: int | None = None
             ) -> tuple[list[Candidate], list[int]]:
    """The cheapest and the dearest buildable candidates by FLOPs among SURVEY random draws, and every FLOPs
    count seen (for the plan's median)."""
    rng = random.Random(seed)
    seen: list[tuple[int, Candidate]] = []
    for _ in range(SURVEY):
        cand = space.decode(space.sample(rng), data)
        try:
            shape = plan(cand.arch)
        except InvalidArchitecture:
            continue
        if max_params and shape.params > max_params:
            continue
        seen.append((shape.flops, cand))
    if not seen:
        return [], []
    seen.sort(key=lambda fc: fc[0])
    chosen = [seen[0][1]] if seen[0][0] == seen[-1][0] else [seen[0][1], seen[-1][1]]
    return chosen, [f for f, _ in seen]


#: the smallest early-rung subset worth training on: below it, rungs use all the training data
MIN_SUBSET = 1000
#: the smallest share of the training data an early rung trains on
MIN_SHARE = 1 / 9

#: (the last epoch of a stage, the share of the training data its epochs train on)
Stages = tuple[tuple[int, float], ...]


def share_at(stages: Stages, epoch: int) -> float:
    """The share of the training data `epoch` (1-based) trains on under `stages`; all of it past them."""
    return next((share for end, share in stages if epoch <= end), 1.0)


def rung_epochs(pruner: str, warmup_epochs: int, epochs: int) -> list[int]:
    """The epochs at which the pruner thins the field: ASHA, successive halving (and each Hyperband bracket) at
    1, 3, 9, ... from warmup_epochs; the median and pareto pruners, modelled as one cut at their first epoch after
    warm-up."""
    first = min(max(1, warmup_epochs), epochs)
    if pruner in ("asha", "successive_halving", "hyperband"):
        r, out = first, []
        while r < epochs:
            out.append(r)
            r *= 3
        return [*out, epochs]
    if pruner in ("median", "pareto") and first < epochs:
        return [first, epochs]
    return [epochs]


def rung_stages(pruner: str, warmup_epochs: int, epochs: int, n_train: int) -> Stages:
    """Cheap early rungs: the epochs up to each rung train on a third of the data the next rung does (at least
    MIN_SHARE, and at least MIN_SUBSET images); the last stage on all of it. Validation never changes, so the
    trials of one rung are compared on the same data at the same fidelity."""
    rungs = rung_epochs(pruner, warmup_epochs, epochs)
    stages: list[tuple[int, float]] = []
    for i, r in enumerate(rungs):
        share = max(MIN_SHARE, 3.0 ** -(len(rungs) - 1 - i), MIN_SUBSET / max(1, n_train))
        share = 1.0 if share > 0.5 else share  # a subset that saves less than half is not a cheap rung
        if stages and stages[-1][1] == share:
            stages[-1] = (r, share)  # same data as the stage before: one stage
        else:
            stages.append((r, share))
    return tuple(stages) if len(stages) > 1 else ()


def describe_stages(stages: Stages) -> str:
    """ "epochs 1 on 1/9 of the training data, 2-3 on 1/3, 4-12 on all" """
    parts, prev = [], 0
    for end, share in stages:
        span = f"epoch {end}" if end == prev + 1 else f"epochs {prev + 1}-{end}"
        parts.append(f"{span} on {'all' if share >= 1 else f'1/{round(1 / share)}'}")
        prev = end
    return ", ".join(parts)


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    epochs: int
    n_train: int
    n_val: int
    probes: tuple[Probe, ...]
    flops_seen: tuple[int, ...]
    pruner: str
    warmup_epochs: int
    probe_s: float = 0.0
    spent_s: float = 0.0  # of the budget, before the first trial: start-up (data, MLflow, worker) and the probe
    stages: Stages = ()  # cheap early rungs (rung_stages); () = every epoch on all the training data
    trials_left: int | None = None  # search.trials less the trials already done: the search's other end
    endgame: float = 0.0  # search.endgame: the budget's last share goes to the best paused trial (asha)

    @property
    def left_s(self) -> float:
        return max(0.0, self.budget_s - self.spent_s)

    def seconds_per_sample(self, flops: int) -> float:
        """Linear in FLOPs between the probes (constant with one probe); never below the cheaper probe."""
        a, b = self.probes[0], self.probes[-1]
        if b.flops == a.flops:
            return a.seconds_per_sample
        slope = (b.seconds_per_sample - a.seconds_per_sample) / (b.flops - a.flops)
        return max(a.seconds_per_sample, a.seconds_per_sample + slope * (flops - a.flops))

    def epoch_seconds(self, flops: int, share: float = 1.0) -> float:
        # validation is a forward pass (about a third of a training step) over the whole validation split
        return self.seconds_per_sample(flops) * (self.n_train * share + self.n_val / 3)

    def _stages(self) -> Stages:
        return self.stages or ((self.epochs, 1.0),)

    def trial_seconds(self, flops: int) -> float:
        """A full-fidelity trial: every stage's epochs, each on its share of the data."""
        total, prev = 0.0, 0
        for end, share in self._stages():
            total, prev = total + (end - prev) * self.epoch_seconds(flops, share), end
        return total

    @property
    def max_flops(self) -> int | None:
        """Candidates above this would spend more than MAX_TRIAL_SHARE of the budget on one full trial; None when
        every candidate seen fits (no cap needed) or none does (the budget is too small for any cap to help)."""
        limit = self.budget_s * MAX_TRIAL_SHARE
        fits = [f for f in self.flops_seen if self.trial_seconds(f) <= limit]
        if not fits or len(fits) == len(self.flops_seen):
            return None
        return max(fits)

    def rungs(self) -> list[int]:
        return rung_epochs(self.pruner, self.warmup_epochs, self.epochs)

    @property
    def keep(self) -> int:
        """1 in `keep` of the trials at a rung goes on: a third under successive halving, half under the median (the
        pareto pruner's median is over smaller peers only: at most half are cut)."""
        return 2 if self.pruner in ("median", "pareto") else 3

    def _share_at(self, epoch: int) -> float:
        return next(share for end, share in self._stages() if epoch <= end)

    def expected(self) -> tuple[float, float, float]:
        """(candidates the budget looks at, how many of them reach full fidelity, seconds per epoch of a typical
        candidate: the median FLOPs under the cap), as the pruner thins the field at each rung."""
        flops = sorted(self.flops_seen)
        cap = self.max_flops
        allowed = [f for f in flops if cap is None or f <= cap] or flops
        typical = allowed[len(allowed) // 2]
        epoch = self.epoch_seconds(typical)
        rungs, cost, share = self.rungs(), 0.0, 1.0
        prev = 0
        for i, r in enumerate(rungs):  # each rung keeps 1/keep of the trials that reached it
            cost += share * sum(self.epoch_seconds(typical, self._share_at(e)) for e in range(prev + 1, r + 1))
            prev = r
            if i < len(rungs) - 1:
                share /= self.keep
        n = self.left_s * (1 - self.endgame) / cost  # the endgame's share trains the finalist on, not new ones
        return n, n * share, epoch

    def _typical_trial_seconds(self) -> float:
        flops = sorted(self.flops_seen)
        cap = self.max_flops
        allowed = [f for f in flops if cap is None or f <= cap] or flops
        return self.trial_seconds(allowed[len(allowed) // 2])

    def lines(self) -> list[str]:
        flops = sorted(self.flops_seen)
        lo, hi = flops[0], flops[-1]
        n, full, epoch = self.expected()
        out = [
            f"budget {_fmt_time(self.budget_s)}"
            + (f" ({_fmt_time(self.left_s)} left after start-up and the probe)" if self.spent_s else "")
            + f": the probe took {self.probe_s:.1f}s; one epoch costs about "
            f"{_fmt_time(self.epoch_seconds(lo))} for the cheapest candidate ({lo / 1e6:.2f} MFLOPs) to "
            f"{_fmt_time(self.epoch_seconds(hi))} for the dearest ({hi / 1e6:.2f} MFLOPs), "
            f"{_fmt_time(epoch)} for a typical one",
            f"rungs ({self.pruner} pruner, about 1 in {self.keep} goes on at each): epochs "
            f"{' -> '.join(map(str, self.rungs()))}" if self.pruner != "none" else
            f"no pruner: every candidate trains {self.epochs} epochs",
            *([f"early rungs on class-stratified subsets: {describe_stages(self.stages)}"] if self.stages else []),
            f"expected: about {n:.0f} candidates looked at, about {full:.1f} trained to full fidelity "
            f"({self.epochs} epochs, about {_fmt_time(self._typical_trial_seconds())} each)",
            *([f"endgame: in the last {_fmt_time(self.endgame * self.budget_s)} ({self.endgame:.0%}, search.endgame) "
               f"the best paused trial goes on before anything else, and trains on past {self.epochs} epochs while "
               "it improves, its learning rate decaying to ~0 (when it is a plain constant)"] if self.endgame else []),
        ]
        cap = self.max_flops
        if cap is not None:
            over = sum(f > cap for f in flops) / len(flops)
            out.append(f"cap: candidates over {cap / 1e6:.2f} MFLOPs ({over:.0%} of the space) would spend more than "
                       f"{MAX_TRIAL_SHARE:.0%} of the budget on one full trial; they are rejected before training")
        elif self.trial_seconds(lo) > self.budget_s * MAX_TRIAL_SHARE:
            out.append(f"warning: even the cheapest candidate needs about {_fmt_time(self.trial_seconds(lo))} for a "
                       f"full trial; raise the budget, lower train.epochs or shrink the space")
        trials = self.trials_needed()
        if self.trials_left is not None and trials > self.trials_left:
            out.append(f"warning: search.trials may end the search first: {self.trials_left} trials left, where the "
                       f"budget has room for about {trials:.0f} (candidates rejected by the cap count as trials); "
                       "raise search.trials (or pass --trials) to spend all of the budget")
        return out

    def trials_needed(self) -> float:
        """Trials the budget has room for: the candidates it looks at, plus those the cap rejects on the way (they
        cost nothing but count toward search.trials)."""
        cap, flops = self.max_flops, self.flops_seen
        kept = sum(f <= cap for f in flops) / len(flops) if cap is not None else 1.0
        return self.expected()[0] / max(kept, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        n, full, epoch = self.expected()
        return {"budget_s": self.budget_s, "spent_s": round(self.spent_s, 2), "probe_s": round(self.probe_s, 2),
                "max_flops": self.max_flops,
                "expected_candidates": round(n, 1), "expected_full_trials": round(full, 2),
                "typical_epoch_s": round(epoch, 2), "rungs": self.rungs(), "stages": [list(s) for s in self.stages],
                "probes": [vars(p) for p in self.probes]}


def cap_reason(flops: int, plan_: BudgetPlan) -> str | None:
    """Why a candidate is rejected before training under the plan's FLOPs cap, or None."""
    cap = plan_.max_flops
    if cap is None or flops <= cap:
        return None
    return (f"{flops / 1e6:.2f} MFLOPs: a full trial would take about {_fmt_time(plan_.trial_seconds(flops))}, over "
            f"{MAX_TRIAL_SHARE:.0%} of search.budget; rejected before training (cap {cap / 1e6:.2f} MFLOPs)")


def early_rungs(spec: Any, n_train: int, epochs: int | None = None) -> Stages:
    """The stages of cheap early rungs (nas.budget.rung_stages) this search trains with, or () for none.
    KerasTuner's Hyperband sets each trial's epochs itself: its rungs stay on all the data."""
    s = spec.search
    wanted = s.rung_data == "subsets" or (s.rung_data == "auto" and s.budget is not None)
    if not wanted or s.backend != "optuna":
        return ()
    return rung_stages(s.pruner, s.warmup_epochs, epochs or spec.train.epochs, n_train)


def plan_budget(spec: Any, info: DataInfo, splits: Any, runner: Any, seconds: float,
                epochs: int | None = None, trials_done: int = 0) -> BudgetPlan:
    """Probe the cheapest and the dearest candidates on `runner` and plan `seconds` of search (nas.budget);
    `trials_done`: those search.trials already counts (the plan warns when the budget has room for more than
    are left)."""
    chosen, flops = extremes(SearchSpace(spec), info, spec.search.seed, spec.space.max_params)
    if not chosen:
        raise NasError("search.budget: no candidate of the space can be built, so there is nothing to plan; "
                       "see `nas validate`")
    started = time.monotonic()
    per_sample = runner.probe(chosen)
    probes = tuple(Probe(plan(c.arch).flops, c.train.batch_size, sec)
                   for c, sec in zip(chosen, per_sample, strict=True))
    return BudgetPlan(seconds, epochs or spec.train.epochs, len(splits.train.y), len(splits.val.y), probes,
                      tuple(flops), spec.search.pruner, spec.search.warmup_epochs, time.monotonic() - started,
                      stages=early_rungs(spec, len(splits.train.y), epochs),
                      endgame=spec.search.endgame if spec.search.pruner == "asha" and spec.search.backend == "optuna"
                      and len(spec.search.objectives) == 1 else 0.0,
                      # KerasTuner's Hyperband sets its own trial count
                      trials_left=max(0, spec.search.trials - trials_done) if spec.search.backend == "optuna" else None)
