"""The Optuna loop with a scripted objective (no training): budget, states, pruning, failure limit, samplers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest

from nas.backends import optuna_backend as ob
from nas.trial import TrialResult
from nas.space import SearchSpace
from nas.spec import parse_spec

SPEC = """name: t
data: {source: digits}
space:
  depth: {low: 1, high: 3}
  filters: [8, 16]
  dropout: {low: 0.0, high: 0.5}
train:
  epochs: 4
  learning_rate: {low: 1e-4, high: 1e-1, log: true}
search:
  sampler: SAMPLER
  pruner: PRUNER
  trials: 6
  seed: 3
  startup_trials: 2
  max_failed_trials: 2
"""


class Scripted:
    """Stands in for TrialObjective: the result depends on the params, and each epoch asks the pruner."""

    stages = ()  # every epoch on all the training data

    def out_of_time(self) -> bool:  # no search.budget here
        return False

    def seconds_left(self) -> float | None:
        return None

    def __init__(self, fail: set[int] = frozenset(), invalid: set[int] = frozenset(), diverge: set[int] = frozenset()):
        self.fail, self.invalid, self.diverge, self.calls = fail, invalid, diverge, []

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, should_prune=None, tags=None) -> TrialResult:
        self.calls.append((number, params, epochs))
        if number in self.invalid:
            return TrialResult("pruned", "block 3: 1x1 input cannot take stride 2", {"epochs_run": 0.0})
        if number in self.fail:
            return TrialResult("failed", "ValueError: boom")
        if number in self.diverge:
            return TrialResult("diverged", "diverged at epoch 1 (loss nan)")
        score = 1 - abs(math.log10(params["train.learning_rate"]) + 2.5) / 3
        for epoch in range(1, epochs + 1):
            metrics = {"val_accuracy": score * epoch / epochs, "val_loss": 1 - score}
            if should_prune and should_prune(epoch, metrics):
                return TrialResult("pruned", f"pruned at epoch {epoch}", {**metrics, "epochs_run": float(epoch)})
        return TrialResult("finished", None, {**metrics, "params": 100.0, "epochs_run": float(epochs)})


def run(tmp_path: Path, sampler: str = "tpe", pruner: str = "median", objective: Scripted | None = None,
        spec_text: str = SPEC) -> tuple[optuna.Study, Scripted, str]:
    spec = parse_spec(spec_text.replace("SAMPLER", sampler).replace("PRUNER", pruner))
    study = ob.open_study(spec, f"sqlite:///{tmp_path / 'study.db'}")
    objective = objective or Scripted()
    reason = ob.run_search(study, spec, SearchSpace(spec), objective, on_trial_done=lambda: None)  # type: ignore[arg-type]
    return study, objective, reason


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp", "qmc"])
def test_every_sampler_respects_budget_and_space(tmp_path: Path, sampler: str) -> None:
    study, objective, reason = run(tmp_path, sampler=sampler, pruner="none")
    assert reason == "budget"
    assert ob.count(study, *ob.DONE_STATES) == 6 == len(objective.calls)
    space = SearchSpace(parse_spec(SPEC.replace("SAMPLER", sampler).replace("PRUNER", "none")))
    assert all(space.contains(p) for _, p, _ in objective.calls)
    assert all(epochs == 4 for _, _, epochs in objective.calls)  # the budget never travels in the params


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_pruners_prune_through_the_epoch_hook(tmp_path: Path, pruner: str) -> None:
    spec = SPEC.replace("trials: 6", "trials: 14")
    study, _, _ = run(tmp_path, pruner=pruner, spec_text=spec)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned, f"{pruner} pruned nothing in 14 trials"
    assert all(t.user_attrs["reason"].startswith("pruned at epoch") for t in pruned)


def test_invalid_architectures_are_pruned_with_reason_and_count(tmp_path: Path) -> None:
    study, _, _ = run(tmp_path, pruner="none", objective=Scripted(invalid={1, 2}))
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert [t.number for t in pruned] == [1, 2]
    assert pruned[0].user_attrs["reason"] == "block 3: 1x1 input cannot take stride 2"
    assert ob.count(study, *ob.DONE_STATES) == 6


def test_failures_do_not_count_and_stop_the_search_at_the_limit(tmp_path: Path) -> None:
    study, _, reason = run(tmp_path, pruner="none", objective=Scripted(fail={0}))
    assert reason == "budget" and ob.count(study, *ob.DONE_STATES) == 6  # one failure: retried with new params
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed[0].user_attrs["reason"] == "ValueError: boom"

    (tmp_path / "b").mkdir()
    study, _, reason = run(tmp_path / "b", pruner="none", objective=Scripted(fail={0, 1, 2, 3}))
    assert reason == "failures"
    assert len(study.get_trials(states=(optuna.trial.TrialState.FAIL,))) == 2


def test_diverged_trials_count_without_stopping_the_search(tmp_path: Path) -> None:
    study, objective, reason = run(tmp_path, pruner="none", objective=Scripted(diverge={0, 1, 2, 3}))
    # a verdict on its params, like pruning: it counts toward the budget (told PRUNED), not toward max_failed_trials
    assert reason == "budget" and len(objective.calls) == 6
    assert [r["state"] for r in sorted(ob.trial_rows(study), key=lambda r: r["trial"])] == ["diverged"] * 4 + ["finished"] * 2
    # ... and a study recorded before "diverged" had a name of its own (PRUNED + nas.state "failed") reads the same
    old = study.get_trials()[0]
    old.user_attrs[ob.STATE] = "failed"
    assert ob.trial_state(old) == "diverged"


def test_resume_does_not_replay_the_first_sessions_samples(tmp_path: Path) -> None:
    _, first, _ = run(tmp_path, sampler="random", pruner="none")
    more = SPEC.replace("trials: 6", "trials: 9").replace("SAMPLER", "random")
    _, second, _ = run(tmp_path, sampler="random", pruner="none", spec_text=more)
    seen = [p for _, p, _ in first.calls]
    assert len(second.calls) == 3 and all(p not in seen for _, p, _ in second.calls)


def test_rerun_continues_to_the_budget(tmp_path: Path) -> None:
    run(tmp_path, pruner="none")
    more = SPEC.replace("trials: 6", "trials: 8")
    study, objective, _ = run(tmp_path, pruner="none", spec_text=more)
    assert len(objective.calls) == 2 and ob.count(study, *ob.DONE_STATES) == 8


def test_multi_objective_returns_every_value(tmp_path: Path) -> None:
    spec = SPEC.replace("  max_failed_trials: 2\n", "  max_failed_trials: 2\n  objectives: [val_accuracy, params]\n")
    study, _, _ = run(tmp_path, pruner="none", spec_text=spec)
    assert all(len(t.values) == 2 for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_storage_url_errors_are_clear() -> None:
    from nas.errors import NasError

    with pytest.raises(NasError, match=r"--storage 'redis://x': expected an Optuna storage URL"):
        ob.make_storage("redis://x")


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_under_a_budget_the_first_trials_are_not_promoted_for_being_first(tmp_path: Path, pruner: str) -> None:
    """Without a budget Optuna promotes the first trial of every rung (it has no peer to lose to); with one, a
    rung promotes nobody until ob.BOOTSTRAP trials have reached it, and then only its top third."""
    spec = SPEC.replace("trials: 6", "trials: 24").replace("  max_failed_trials: 2\n",
                                                          "  max_failed_trials: 2\n  budget: 1h\n")
    study, _, _ = run(tmp_path, sampler="random", pruner=pruner, spec_text=spec)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials[:ob.BOOTSTRAP]] == [optuna.trial.TrialState.PRUNED] * ob.BOOTSTRAP
    assert all(t.last_step < 4 for t in trials[:ob.BOOTSTRAP])  # cut at a rung (Hyperband: its bracket's first)
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # later ones can still win through

    (tmp_path / "free").mkdir()
    free, _, _ = run(tmp_path / "free", sampler="random", pruner=pruner,
                     spec_text=SPEC.replace("trials: 6", "trials: 9"))
    assert sorted(free.get_trials(), key=lambda t: t.number)[0].state == optuna.trial.TrialState.COMPLETE


class Pausing(Scripted):
    """A scripted objective that honours "pause" (stop, keep the epoch) and resume_of (go on from there)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached: dict[int, int] = {}  # trial -> last epoch trained
        self.decays: dict[int, int | None] = {}  # trial -> the epoch after which its learning rate decays
        self.spans: list[tuple[int, int | None, int, int]] = []  # (trial, resume_of, first epoch, last epoch)

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, should_prune=None, tags=None,
                 checkpoint: bool = False, resume_of: int | None = None, decay_from: int | None = None) -> TrialResult:
        assert checkpoint, "under asha every trial must leave a checkpoint when it pauses"
        self.decays[number] = decay_from
        start = self.reached[resume_of] + 1 if resume_of is not None else 1
        score = 1 - abs(math.log10(params["train.learning_rate"]) + 2.5) / 3
        for epoch in range(start, epochs + 1):
            metrics = {"val_accuracy": score * epoch / epochs, "val_loss": 1 - score}
            self.reached[number] = epoch
            verdict = should_prune(epoch, metrics)
            if verdict == "stop":  # search.budget spent (Clocked)
                break
            if verdict in ("pause", True, "prune"):
                self.spans.append((number, resume_of, start, epoch))
                return TrialResult("paused", f"paused at epoch {epoch}", {**metrics, "epochs_run": float(epoch - start + 1)})
        self.spans.append((number, resume_of, start, epoch))
        return TrialResult("finished", None, {**metrics, "epochs_run": float(epoch - start + 1)})


def test_asha_pauses_at_rungs_and_continues_the_top_third_from_where_they_stopped(tmp_path: Path) -> None:
    spec = SPEC.replace("epochs: 4", "epochs: 9").replace("trials: 6", "trials: 12")
    objective = Pausing()
    study, _, reason = run(tmp_path, pruner="asha", objective=objective, spec_text=spec)
    assert reason == "budget"
    trials = {t.number: t for t in study.get_trials()}
    first_two = [s for s in objective.spans if s[0] in (0, 1)]
    assert [s[3] for s in first_two] == [1, 1]  # nobody goes on for being early: the first two pause at rung 1
    resumed = [s for s in objective.spans if s[1] is not None]
    assert resumed, "no paused trial was ever continued"
    for number, parent, start, _ in resumed:
        assert start == objective.reached[parent] + 1 == trials[parent].user_attrs["nas.paused_at"] + 1
        assert trials[number].params == trials[parent].params  # the same configuration, continued
        assert trials[number].intermediate_values[trials[parent].user_attrs["nas.paused_at"]] == \
            trials[parent].intermediate_values[trials[parent].user_attrs["nas.paused_at"]]  # its curve carried over
    # no epoch trained twice: each configuration's spans tile 1..its last epoch
    roots: dict[int, list[tuple[int, int]]] = {}
    for number, _, start, end in objective.spans:
        roots.setdefault(int(trials[number].user_attrs.get("nas.root", number)), []).append((start, end))
    assert len(roots) == 12 == ob.count(study, *ob.DONE_STATES)  # search.trials counts configurations
    for spans in roots.values():
        assert [s for s, _ in sorted(spans)] == [1] + [e + 1 for _, e in sorted(spans)[:-1]]
    # ASHA's rule: a configuration goes past rung r (epochs 1, 3) only while it ranks in the top third of all the
    # configurations that had reached r by then (the trial that trains its epoch r + 1 is "then")
    def root(t: Any) -> int:
        return int(t.user_attrs.get("nas.root", t.number))

    for r in (1, 3):
        went_on = {root(t): t.number for t in sorted(trials.values(), key=lambda t: -t.number)
                   if any(step > r for step in t.intermediate_values)}  # the earliest such trial per configuration
        assert r == 3 or went_on, "nobody got past rung 1"
        for config, then in went_on.items():
            peers = {root(t): t.intermediate_values[r] for t in trials.values()
                     if t.number <= then and r in t.intermediate_values}
            ranked = sorted(peers, key=peers.get, reverse=True)
            assert ranked.index(config) < len(ranked) // 3, (r, config, then, peers)
    best = max(roots, key=lambda c: -abs(math.log10(trials[c].params["train.learning_rate"]) + 2.5))
    assert max(e for _, e in roots[best]) == 9, "the best configuration never reached full fidelity"
    assert sum(e - s + 1 for spans in roots.values() for s, e in spans) < 12 * 9 / 2  # far cheaper than full runs


def test_a_sqlite_study_is_written_in_wal_mode_and_read_while_open(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "study.db"
    storage = ob.make_storage(f"sqlite:///{db.as_posix()}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a read-only reader (nas status) sees the committed trial while the search still holds the database
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert ro.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 1
    ro.close()


def test_a_finished_search_leaves_its_study_without_wal_files(tiny_spec, tmp_path: Path) -> None:
    """WAL while searching; the default journal again at the end, so that readers create no files in the run dir."""
    import sqlite3
    import subprocess
    import sys

    spec = tiny_spec(name="wal", trials=1, epochs=1, extra="tracking: {enabled: false}\n")
    r = subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "wal"
    assert not (run / "study.db-wal").exists() and not (run / "study.db-shm").exists()
    with sqlite3.connect(run / "study.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 1


class Clocked(Pausing):
    """Pausing on a simulated clock: every epoch takes `epoch_s` seconds of a `budget_s` search.budget, and a
    trial still training at the deadline stops there (as the real trials do)."""

    stages = ()

    def __init__(self, budget_s: float, epoch_s: float = 10.0) -> None:
        super().__init__()
        self.budget_s, self.epoch_s, self.clock = budget_s, epoch_s, 0.0
        self.started: dict[int, float] = {}  # trial -> the clock when it began

    def seconds_left(self) -> float:
        return self.budget_s - self.clock

    def out_of_time(self) -> bool:
        return self.clock >= self.budget_s

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, should_prune=None, tags=None,
                 checkpoint: bool = False, resume_of: int | None = None, decay_from: int | None = None) -> TrialResult:
        self.started[number] = self.clock
        start = self.reached[resume_of] + 1 if resume_of is not None else 1

        def prune(epoch: int, metrics: dict[str, float]) -> Any:
            self.clock += self.epoch_s
            return "stop" if self.out_of_time() else should_prune(epoch, {**metrics, "epoch_s": self.epoch_s})

        result = super().__call__(number, params, epochs=epochs, should_prune=prune, checkpoint=checkpoint,
                                  resume_of=resume_of, decay_from=decay_from)
        result.metrics["wall_time_s"] = result.metrics["epochs_run"] * self.epoch_s
        return result



def test_near_the_deadline_the_best_paused_trial_finishes_instead_of_a_new_one_starting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs of 10 s, a 600 s budget, rungs at epochs 1 and 3 of 9: a paused trial needs 60-80 s to finish, so in
    the last ENDGAME x that no new configuration starts while a paused one waits. Without the endgame (the
    control, ENDGAME 0) new configurations start up to the deadline."""
    from nas.backends import asha

    spec = SPEC.replace("epochs: 4", "epochs: 9").replace("trials: 6", "trials: 200")
    window = asha.ENDGAME * 60 + 10  # the endgame of the cheapest rest (a pause at epoch 3), and a first rung

    def late_starts(where: Path) -> list[tuple[int, bool]]:
        where.mkdir()
        objective = Clocked(budget_s=600)
        study, _, reason = run(where, sampler="random", pruner="asha", objective=objective, spec_text=spec)
        assert reason == "time"
        trials = {t.number: t for t in study.get_trials()}
        return [(n, "nas.resume_of" in trials[n].user_attrs) for n, at in sorted(objective.started.items())
                if 600 - at <= window]

    late = late_starts(tmp_path / "endgame")
    assert late and all(continues for _, continues in late), late
    monkeypatch.setattr(asha, "ENDGAME", 0.0)
    control = late_starts(tmp_path / "control")
    assert control and not all(continues for _, continues in control), control


class LateStar(Clocked):
    """Clocked, where every configuration that starts after `star_at` seconds is the best yet (its learning rate
    set to the best one): it ranks first at every rung, so its rungs would let it go on to the last epoch."""

    def __init__(self, budget_s: float, star_at: float) -> None:
        super().__init__(budget_s)
        self.star_at, self.stars = star_at, set()

    def __call__(self, number: int, params: dict[str, Any], **kw: Any) -> TrialResult:
        if self.clock >= self.star_at and kw.get("resume_of") is None or kw.get("resume_of") in self.stars:
            self.stars.add(number)
            params = {**params, "train.learning_rate": 10 ** -2.5}
        return super().__call__(number, params, **kw)


def test_a_trial_going_on_through_its_rungs_late_pauses_so_the_finalist_can_finish(tmp_path: Path) -> None:
    """The 1-hour bench's failure: near the deadline a new configuration ranked first at its rungs and went on
    through them to the deadline, while the best paused trial, further along, never finished. At each rung the
    endgame's test is made too: the late star pauses there and the finalist goes on at once."""
    spec = SPEC.replace("epochs: 4", "epochs: 9").replace("trials: 6", "trials: 200")
    objective = LateStar(budget_s=600, star_at=470)
    study, _, reason = run(tmp_path, sampler="random", pruner="asha", objective=objective, spec_text=spec)
    trials = {t.number: t for t in study.get_trials()}
    stars = sorted(n for n in objective.stars if "nas.resume_of" not in trials[n].user_attrs)
    assert stars, "no configuration started late"
    star = stars[0]
    assert trials[star].user_attrs.get("nas.paused_at") == 1, objective.spans  # it paused at its first rung
    after = [n for n in sorted(objective.started) if n > star]
    assert after and "nas.resume_of" in trials[after[0]].user_attrs  # a paused trial went on next
    # it finishes its epochs before the deadline (and trains on past them: search.endgame is on by default)
    assert objective.reached[after[0]] >= 9 and trials[after[0]].state.name == "COMPLETE", objective.spans


@pytest.mark.parametrize("share", [0.3, 0.0])
def test_in_the_endgames_share_of_the_budget_the_finalist_trains_on_past_train_epochs(
        tmp_path: Path, share: float) -> None:
    """search.endgame 0.3 of a 600 s budget: from 180 s before the deadline (and a first rung's 10 s) no new
    configuration starts; the best paused trial goes on, to the deadline, past train.epochs (9): its learning
    rate is a plain constant. With search.endgame 0 no trial trains past train.epochs."""
    spec = SPEC.replace("epochs: 4", "epochs: 9").replace("trials: 6", f"trials: 200\n  budget: 10m\n  endgame: {share}")
    objective = Clocked(budget_s=600)
    study, _, reason = run(tmp_path, sampler="random", pruner="asha", objective=objective, spec_text=spec)
    assert reason == "time"
    trials = {t.number: t for t in study.get_trials()}
    longest = max(objective.reached.values())
    if share == 0:
        assert longest <= 9 and not any("nas.epochs" in t.user_attrs for t in trials.values())
        return
    late = [n for n, at in sorted(objective.started.items()) if at >= 600 - 180 - 10]
    assert late and all("nas.resume_of" in trials[n].user_attrs for n in late), late
    first = late[0]
    parent = trials[trials[first].user_attrs["nas.resume_of"]]
    paused = [t for t in trials.values() if "nas.paused_at" in t.user_attrs and t.number < first
              and not any(x.user_attrs.get("nas.resume_of") == t.number for x in trials.values() if x.number < first)]
    value = {t.number: t.intermediate_values[t.user_attrs["nas.paused_at"]] for t in paused}
    assert parent.number == max(value, key=value.get)  # the best paused trial was the finalist
    assert trials[first].user_attrs["nas.epochs"] > 9 and objective.reached[first] > 9  # it trained on past 9
    assert objective.decays[first] == parent.user_attrs["nas.paused_at"]  # its learning rate decays from its pause
    assert all(d is None for n, d in objective.decays.items() if "nas.epochs" not in trials[n].user_attrs)
    assert objective.started[first] + (objective.reached[first] - parent.user_attrs["nas.paused_at"]) * 10 >= 590


def test_the_endgame_picks_the_best_paused_trial_once_the_time_left_is_what_it_needs() -> None:
    from optuna.distributions import FloatDistribution

    from nas.backends.asha import ASHA, ENDGAME, PAUSED_AT, RESUME_OF

    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}

    def paused(x: float, at: int, value: float, ran: int, wall: float) -> None:
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
            intermediate_values={at: value}, user_attrs={PAUSED_AT: at, "epochs_run": ran, "wall_time_s": wall}))

    paused(0.1, 1, 0.70, 1, 20.0)  # 20 s an epoch, 8 to go: 160 s
    paused(0.2, 3, 0.85, 3, 90.0)  # the best: 30 s an epoch, 6 to go: 180 s
    paused(0.3, 3, 0.80, 2, 40.0)  # a continuation's pause: 2 epochs of its own in 40 s
    a = ASHA(1, 9, maximize=True)
    # a new configuration would first take the median pace (20 s) to its first rung (epoch 1)
    assert a.first_rung_seconds(study) == 20.0
    assert a.endgame(study, ENDGAME * 180 + 20 + 1) is None  # time enough for new configurations still
    assert a.endgame(study, ENDGAME * 180 + 20).number == 1
    # a running trial at a rung: going on to its next stop (then) must leave the finalist its time, if it is
    # behind the finalist (rung 1 < 3, or rung 3 with a lower value)
    study.add_trial(optuna.trial.create_trial(params={"x": 0.4}, distributions=dist,
                                              state=optuna.trial.TrialState.RUNNING))
    assert a.endgame(study, 400, then=100, behind=(3, 1, 0.99)) is None  # 300 left after: enough
    assert a.endgame(study, 360, then=100, behind=(3, 1, 0.99)).number == 1  # 260 left after: too little
    assert a.endgame(study, 360, then=100, behind=(3, 3, 0.84)).number == 1  # same rung, worse
    assert a.endgame(study, 360, then=100, behind=(3, 3, 0.90)) is None  # same rung, better: it goes on
    assert a.endgame(study, 10, then=100, behind=(3, 9, 0.50)) is None  # further along than the finalist
    assert [a.next_stop(e) for e in (1, 2, 3, 8)] == [3, 3, 9, 9]
    # search.endgame's reserve: the endgame begins once the time left is below it, whatever the need
    assert a.endgame(study, 1000, reserve=900) is None
    assert a.endgame(study, 1000, reserve=1000 - 20).number == 1
    # what the finalist trains to in the time left, at its pace (30 s an epoch from epoch 3), never below 9
    assert [a.epochs_within(study.trials[1], s) for s in (100, 300, 329, 330)] == [9, 13, 13, 14]
    assert a.seconds_to_finish(study.trials[2]) == 120.0
    # with cheap early rungs, the rest of the epochs cost more than the ones it ran: epoch 1 on 1/9 of the data
    stages = {1: 1 / 9, 2: 1 / 3, 3: 1 / 3}
    assert a.seconds_to_finish(study.trials[0], lambda e: stages.get(e, 1.0)) == pytest.approx(20 * 9 * (2 / 3 + 6))
    # once it is queued (or running), the next best is the finalist
    study.enqueue_trial({"x": 0.2}, user_attrs={RESUME_OF: 1})
    assert a.finalist(study).number == 2
    assert ASHA(1, 9, maximize=False).finalist(study).number == 0  # minimizing: the lowest value


def test_a_shared_studys_winner_may_be_a_paused_trial_no_one_continued(tmp_path: Path) -> None:
    """`nas export` of a shared study takes its winner from the study: the same rule as best/ (nas.objective)."""
    from optuna.distributions import FloatDistribution

    from nas.backends.asha import PAUSED_AT, RESUME_OF

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=ob.make_storage(url), study_name="s", direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}

    def add(state: Any, val: float, **attrs: Any) -> None:
        study.add_trial(optuna.trial.create_trial(
            params={"x": val}, distributions=dist, state=state, value=val if state.name == "COMPLETE" else None,
            intermediate_values={3: val}, user_attrs={"val_accuracy": val, "val_samples": 6000, **attrs}))

    done, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    add(done, 0.88)
    add(pruned, 0.95)  # pruned for good (median, pareto): its model was never kept
    add(pruned, 0.93, **{PAUSED_AT: 3})  # paused, then continued by trial 4: that one stands for it
    add(pruned, 0.91, **{PAUSED_AT: 3})  # leads 0.88 past the noise of 6,000 images: 0.91 - 0.0105
    add(done, 0.89, **{RESUME_OF: 2})
    add(pruned, 0.90, **{PAUSED_AT: 3})  # 0.90 - 0.011: below trial 3's competing value
    spec = parse_spec(SPEC.replace("SAMPLER", "tpe").replace("PRUNER", "asha"))
    assert ob.study_winner(url, "s", spec).number == 3
    constrained = parse_spec(SPEC.replace("SAMPLER", "tpe").replace("PRUNER", "asha")
                             + "  constraints: {params: '<= 1000'}\n")
    assert ob.study_winner(url, "s", constrained).number == 4  # a paused trial is never measured against them
