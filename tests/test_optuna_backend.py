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

    def out_of_time(self) -> bool:  # no search.budget here
        return False

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
        self.spans: list[tuple[int, int | None, int, int]] = []  # (trial, resume_of, first epoch, last epoch)

    def __call__(self, number: int, params: dict[str, Any], *, epochs: int, should_prune=None, tags=None,
                 checkpoint: bool = False, resume_of: int | None = None) -> TrialResult:
        assert checkpoint, "under asha every trial must leave a checkpoint when it pauses"
        start = self.reached[resume_of] + 1 if resume_of is not None else 1
        score = 1 - abs(math.log10(params["train.learning_rate"]) + 2.5) / 3
        for epoch in range(start, epochs + 1):
            metrics = {"val_accuracy": score * epoch / epochs, "val_loss": 1 - score}
            self.reached[number] = epoch
            verdict = should_prune(epoch, metrics)
            if verdict in ("pause", True, "prune"):
                self.spans.append((number, resume_of, start, epoch))
                return TrialResult("paused", f"paused at epoch {epoch}", {**metrics, "epochs_run": float(epoch - start + 1)})
        self.spans.append((number, resume_of, start, epochs))
        return TrialResult("finished", None, {**metrics, "epochs_run": float(epochs - start + 1)})


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
