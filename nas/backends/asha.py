"""`pruner: asha`: asynchronous successive halving that pauses trials instead of throwing their training away.

Rungs sit at epochs r, 3r, 9r, ... below train.epochs (r = search.warmup_epochs, at least 1). A trial that
reaches a rung goes on at once only if its value ranks in the top third of every configuration that has reached
that rung so far, and only as long as the rung has not promoted its share already. Otherwise it *pauses*: it
stops there, leaves a checkpoint of its whole training state (nas.checkpoint), and is told to Optuna as PRUNED
(so the sampler learns from its curve). Before every new trial the search looks for a paused trial that now
ranks in its rung's top third (peers that came later did worse) and, if one does, continues it from its
checkpoint as a new Optuna trial with the same params, instead of sampling a new configuration. Highest rungs
first, as in ASHA (Li et al., 2020), in its promotion variant with pause and resume (as Syne Tune's).

Under search.budget the search also has an endgame: once the time left is about what the best paused trial needs to
finish its epochs (ENDGAME times its own seconds per epoch over the epochs it has left), that trial goes on before
anything else, whatever its rung's quota, and no later rung pauses it again. search.endgame (a share of the budget)
starts the endgame earlier, and then the finalist trains on past train.epochs to the deadline while it improves, its
learning rate decaying to ~0 (when it is a plain constant). Late in a budget a new configuration can reach an early
rung at most, and cannot win; the best configuration found so far should not sit paused when the time runs out. The
test is made wherever time could go elsewhere: before a new configuration (counting what it would take to reach its
first rung), and at each rung a running trial passes (counting what going on to its next stop would take). A running
trial behind the finalist then pauses and the finalist is queued at once, so that no late promotion runs out the
clock (a 1-hour search lost its finalist so: the endgame waited between trials while a new configuration went on
through its rungs to the deadline).
(A paused trial's best epoch can win the search even so, when it leads every finished trial past the noise of
the validation split: nas.trial.competing_value.)

So no trial reaches full fidelity for being first (the first trials pause at rung one until peers arrive), no
promoted trial starts over, and decisions never wait for a synchronous rung: with several workers each one
takes the next promotion or a new configuration. A configuration is one lineage (a trial and the trials that
continued it, `nas.resume_of`); it counts once toward search.trials.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

ETA = 3  # a rung promotes the top 1/ETA of the configurations that reached it
#: under a budget, the best paused trial goes on once the time left is below this many times what it needs to finish
#: (above 1: the paces are estimates, and the first epoch of a continuation pays its start-up)
ENDGAME = 1.5
RESUME_OF = "nas.resume_of"  # user attr: this trial continues trial N from its checkpoint
ROOT = "nas.root"  # user attr: the first trial of the lineage (its configuration's identity)
FINALIST = "nas.finalist"  # user attr: the endgame's continuation; no rung pauses it again
EPOCHS = "nas.epochs"  # user attr: the endgame's finalist trains to this epoch (past train.epochs), decaying its lr
PAUSED_AT = "nas.paused_at"  # user attr: the epoch at which the trial paused with a checkpoint
FROM_RUNG = "nas.from_rung"  # user attr: the rung a continuation was promoted from


def rungs(min_epochs: int, epochs: int) -> list[int]:
    """The epochs at which a trial may pause: min_epochs * ETA^k below `epochs`."""
    r, out = max(1, min_epochs), []
    while r < epochs:
        out.append(r)
        r *= ETA
    return out


def root(t: FrozenTrial) -> int:
    return int(t.user_attrs.get(ROOT, t.number))


@dataclass(frozen=True)
class Rung:
    epoch: int
    values: dict[int, float]  # configuration (lineage root) -> its value at this rung
    promoted: frozenset[int]  # configurations that went on past this rung (or are queued to)

    def promotable(self, maximize: bool) -> list[int]:
        """Configurations in the rung's top 1/ETA that it has not promoted yet, best first."""
        ranked = sorted(self.values, key=lambda c: self.values[c], reverse=maximize)
        return [c for c in ranked[:len(ranked) // ETA] if c not in self.promoted]


class ASHA:
    def __init__(self, min_epochs: int, epochs: int, maximize: bool):
        self.levels, self.maximize, self.epochs = rungs(min_epochs, epochs), maximize, epochs

    def _rung(self, trials: list[FrozenTrial], epoch: int) -> Rung:
        values: dict[int, float] = {}
        promoted: set[int] = set()
        for t in trials:
            value = t.intermediate_values.get(epoch)
            if t.state == OptunaState.WAITING and t.user_attrs.get(FROM_RUNG) == epoch:
                promoted.add(root(t))  # queued to continue from this rung
            if value is None or not math.isfinite(value):
                continue
            values[root(t)] = value
            if any(step > epoch for step in t.intermediate_values):
                promoted.add(root(t))
        return Rung(epoch, values, frozenset(promoted))

    def decide(self, study: optuna.Study, trial_number: int, epoch: int) -> str:
        """At the end of `epoch` of a running trial whose value was just reported: "continue" or "pause"."""
        if epoch not in self.levels:
            return "continue"
        trials = study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial_number)
        return "continue" if root(me) in self._rung(trials, epoch).promotable(self.maximize) else "pause"

    def next_promotion(self, study: optuna.Study) -> FrozenTrial | None:
        """A paused trial its rung now promotes (highest rung first), or None."""
        trials = study.get_trials(deepcopy=False)
        paused = {root(t): t for t in trials if t.state == OptunaState.PRUNED and PAUSED_AT in t.user_attrs}
        for epoch in reversed(self.levels):
            for config in self._rung(trials, epoch).promotable(self.maximize):
                t = paused.get(config)
                if t is not None and t.user_attrs[PAUSED_AT] == epoch:
                    return t
        return None

    @staticmethod
    def queue(study: optuna.Study, paused: FrozenTrial, finalist: bool = False, epochs: int | None = None) -> None:
        """Queue the continuation of `paused`: the next trial takes its params and resumes its checkpoint. The
        endgame's `finalist` goes on through its later rungs without pausing again, to `epochs` if given (past
        train.epochs) instead of train.epochs."""
        study.enqueue_trial(paused.params, user_attrs={RESUME_OF: paused.number, ROOT: root(paused),
                                                       FROM_RUNG: paused.user_attrs[PAUSED_AT],
                                                       **({FINALIST: True} if finalist else {}),
                                                       **({EPOCHS: epochs} if epochs is not None else {})})

    def finalist(self, study: optuna.Study) -> FrozenTrial | None:
        """The best paused trial no trial continues yet (by its value where it paused), or None."""
        trials = study.get_trials(deepcopy=False)
        taken = {int(t.user_attrs[RESUME_OF]) for t in trials
                 if RESUME_OF in t.user_attrs and t.state != OptunaState.FAIL}  # continued, running or queued

        def value(t: FrozenTrial) -> float:
            return t.intermediate_values.get(t.user_attrs[PAUSED_AT], math.nan)

        paused = [t for t in trials if t.state == OptunaState.PRUNED and PAUSED_AT in t.user_attrs
                  and t.number not in taken and math.isfinite(value(t))]
        return (max if self.maximize else min)(paused, key=value) if paused else None

    @staticmethod
    def _pace(t: FrozenTrial, last: int, share: Callable[[int], float]) -> float | None:
        """`t`'s seconds per epoch on all the training data, from the epochs it ran up to `last` (None: no record)."""
        ran, wall = t.user_attrs.get("epochs_run"), t.user_attrs.get("wall_time_s")
        if not ran or not wall or not math.isfinite(ran) or not math.isfinite(wall):
            return None
        done = sum(share(e) for e in range(last - int(ran) + 1, last + 1))
        return float(wall) / done if done > 0 else None

    def seconds_to_finish(self, t: FrozenTrial, share: Callable[[int], float] = lambda epoch: 1.0) -> float | None:
        """What continuing paused trial `t` to the last epoch should take, from its own pace: its seconds per
        epoch, where an epoch's cost goes with `share(epoch)`, the share of the training data it trains on (cheap
        early rungs). None when `t` has no pace on record."""
        at = int(t.user_attrs[PAUSED_AT])
        pace = self._pace(t, at, share)
        return None if pace is None else pace * sum(share(e) for e in range(at + 1, self.epochs + 1))

    def first_rung_seconds(self, study: optuna.Study, share: Callable[[int], float] = lambda epoch: 1.0) -> float:
        """What a new configuration should take to reach the first rung: the median pace of the trials so far."""
        paces = []
        for t in study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED)):
            if t.intermediate_values:
                pace = self._pace(t, int(t.user_attrs.get(PAUSED_AT, max(t.intermediate_values))), share)
                if pace is not None:
                    paces.append(pace)
        first = self.levels[0] if self.levels else self.epochs
        return statistics.median(paces) * sum(share(e) for e in range(1, first + 1)) if paces else 0.0

    def endgame(self, study: optuna.Study, seconds_left: float, share: Callable[[int], float] = lambda epoch: 1.0,
                then: float | None = None, behind: tuple[int, int, float] | None = None,
                reserve: float = 0.0) -> FrozenTrial | None:
        """Under a budget: the best paused trial, once doing something else first would leave less than ENDGAME
        times what it needs to finish, or less than `reserve` seconds (search.endgame's share of the budget).
        That something else takes `then` seconds: going on to the next rung for a running trial, or reaching
        the first rung for a new configuration (the default). `behind` = (configuration, epoch, value) of a
        running trial at a rung, its configuration being its lineage's root: the finalist must be another
        configuration, ahead of it (paused at a later rung, or at the same one with a better value), else the
        running trial is the better bet and goes on."""
        t = self.finalist(study)
        if t is None:
            return None
        if behind is not None:
            config, epoch, value = behind
            at, theirs = int(t.user_attrs[PAUSED_AT]), t.intermediate_values[t.user_attrs[PAUSED_AT]]
            if root(t) == config or at < epoch or (at == epoch and not (theirs > value if self.maximize
                                                                              else theirs < value)):
                return None
        need = self.seconds_to_finish(t, share)
        if need is None:
            return None
        then = self.first_rung_seconds(study, share) if then is None else then
        return t if seconds_left - then <= max(ENDGAME * need, reserve) else None

    def epochs_within(self, t: FrozenTrial, seconds: float, share: Callable[[int], float] = lambda epoch: 1.0) -> int:
        """The last epoch paused trial `t` reaches in `seconds` at its own pace, and at least train.epochs: what
        the endgame's finalist trains to when its schedule allows training on."""
        at = int(t.user_attrs[PAUSED_AT])
        pace = self._pace(t, at, share)
        if pace is None or pace <= 0:
            return self.epochs
        epoch, spent = at, 0.0
        while spent + pace * share(epoch + 1) <= seconds:
            epoch, spent = epoch + 1, spent + pace * share(epoch + 1)
        return max(self.epochs, epoch)

    def next_stop(self, epoch: int) -> int:
        """The epoch where a trial going on from `epoch` next stops: the next rung, or the last epoch."""
        return next((r for r in self.levels if r > epoch), self.epochs)
