"""Several machines on one search: `nas search --storage postgresql://... --tracking-uri http://...` from two
working directories (two "machines") against a real PostgreSQL server and a real MLflow tracking server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from nas.backends.optuna_backend import OptunaBackend
from nas.errors import NasError
from nas.rundir import RunDir
from nas.space import SearchSpace
from nas.spec.loader import load_spec
from tests.servers import MlflowServer, Postgres
from tests.test_kills import Search, wait_for

NAS = [sys.executable, "-m", "nas"]
DONE = ("COMPLETE", "PRUNED")


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tracking() -> Iterator[MlflowServer]:
    server = MlflowServer()
    yield server
    server.close()


def _machine(root: Path, name: str) -> Path:
    """A machine's working directory: its own runs/ beside it."""
    home = root / name
    home.mkdir(parents=True)
    return home


_STORAGES: dict[str, Any] = {}


def _study(url: str, name: str) -> optuna.Study:
    """The study, through one storage (one connection pool) per URL: the tests poll it many times a second,
    and a new pool per poll would exhaust the server's connections."""
    from nas.backends.optuna_backend import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url not in _STORAGES:
        _STORAGES[url] = make_storage(url)
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


def _counted(study: optuna.Study) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState[s] for s in DONE])
            if not t.user_attrs.get("nas.surplus")]


def _mlflow(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id], max_results=1000)


def _spec(root: Path, tiny_spec: Any, name: str, trials: int, epochs: int) -> Path:
    spec = tiny_spec(name=name, trials=trials, epochs=epochs)
    shared = root / f"{name}.yaml"  # every machine runs the same file (as from a shared checkout)
    shared.write_text(spec.read_text())
    return shared


def _args(pg: Postgres, tracking: MlflowServer) -> list[str]:
    return ["--storage", pg.url, "--tracking-uri", tracking.url]


def _two_machines(spec: Path, pg: Postgres, tracking: MlflowServer, root: Path) -> list[tuple[Path, Search]]:
    """`nas search` of the same spec started on machines "a" and "b": (working directory, search) each."""
    out = []
    for name in ("a", "b"):
        home = _machine(root, name)
        out.append((home, Search(spec, home / "runs", name, extra=_args(pg, tracking), cwd=home)))
    return out


@pytest.mark.slow
def test_two_machines_share_one_search_one_parent_run_and_exact_trials(pg, tracking, tiny_spec, tmp_path) -> None:
    spec = _spec(tmp_path, tiny_spec, "twomachines", trials=6, epochs=3)
    (a_home, a), (b_home, b) = _two_machines(spec, pg, tracking, tmp_path)
    assert a.wait(600) == 0, a.stdout() + a.stderr()
    assert b.wait(600) == 0, b.stdout() + b.stderr()

    study = _study(pg.url, "twomachines")
    counted = _counted(study)
    assert len(counted) == 6, [(t.number, t.state) for t in study.trials]
    owners = {t.user_attrs["nas.owner"] for t in counted}
    assert len(owners) == 2, "both machines trained trials"

    runs = _mlflow(tracking.url, "twomachines")
    parents = [r for r in runs if r.data.tags.get("nas.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("nas.kind") == "trial"]
    assert len(parents) == 1, [p.data.tags.get("nas.run_dir") for p in parents]
    assert parents[0].info.status == "FINISHED"
    assert study.user_attrs["nas.mlflow_parent_run_id"] == parents[0].info.run_id
    assert len(trials) == 6 and all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    assert {t.data.tags["nas.owner"] for t in trials} == owners
    assert all(t.data.tags.get("nas.host") for t in trials)
    # each machine keeps its own run dir, with the best of its own trials
    for home in (a_home, b_home):
        assert (home / "runs" / "twomachines" / "best" / "model.keras").exists()

    # the study's winner is reachable from every machine: its model is on its MLflow run, and `nas export` on the
    # machine that did not train it exports it
    winner = max((t for t in counted if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    run = next(r for r in trials if r.data.tags["nas.trial"] == str(winner.number))
    from mlflow.tracking import MlflowClient

    assert "model/model.keras" in {f.path for f in MlflowClient(tracking.url).list_artifacts(run.info.run_id,
                                                                                            "model")}
    other = next(h for h in (a_home, b_home)
                 if json.loads((h / "runs" / "twomachines" / "run.json").read_text())["uid"]
                 != winner.user_attrs["nas.owner"])
    r = subprocess.run([*NAS, "export", "runs/twomachines", "--formats", "keras", "--sparsity", "0"],
                       capture_output=True, text=True, timeout=600, cwd=other, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((other / "runs" / "twomachines" / "export" / "manifest.json").read_text())
    assert manifest["source"]["trial"] == winner.number
    assert "shared study" in manifest["source"]["chosen"]


def test_a_machine_with_a_different_spec_is_refused_with_the_changed_keys(pg, tiny_spec, tmp_path) -> None:
    spec = _spec(tmp_path, tiny_spec, "mismatch", trials=2, epochs=1)
    home = _machine(tmp_path, "a")
    # the first machine's study, as its `nas search` opens it (no training needed to test the refusal)
    first = load_spec(spec)
    OptunaBackend.open(first.spec, SearchSpace(first.spec), RunDir(tmp_path / "first"), first.hash, storage=pg.url,
                       new=False, resuming=False)

    other = tmp_path / "other" / "mismatch.yaml"
    other.parent.mkdir()
    other.write_text(spec.read_text().replace("filters: [8, 16]", "filters: [8, 32]").replace(
        "seed: 0", "seed: 5"))
    r = subprocess.run([*NAS, "search", str(other), "--runs-dir", str(home / "runs"), "--storage", pg.url],
                       capture_output=True, text=True, timeout=300, cwd=home, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "was created by a different spec" in r.stderr
    assert "space.filters" in r.stderr and "search.seed" in r.stderr and "[8, 32]" in r.stderr
    assert "Traceback" not in r.stderr
    assert "postgres@" in r.stderr  # the URL, without a password (there is none here to hide)


@pytest.mark.slow
def test_kill_9_of_one_machine_mid_trial_the_other_reruns_its_trial(pg, tracking, tiny_spec, tmp_path) -> None:
    spec = _spec(tmp_path, tiny_spec, "killone", trials=6, epochs=8)
    (a_home, a), (b_home, b) = _two_machines(spec, pg, tracking, tmp_path)

    def b_training() -> Any:
        try:
            study = _study(pg.url, "killone")
        except KeyError:
            return None
        b_uid = (b_home / "runs" / "killone" / "run.json")
        if not b_uid.exists():
            return None
        uid = json.loads(b_uid.read_text())["uid"]
        return next((t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
                     if t.user_attrs.get("nas.owner") == uid and len(t.intermediate_values) >= 1), None)

    killed = wait_for(b, "machine b training a trial", b_training, timeout=400)
    b.signal(signal.SIGKILL)
    b.wait(30)
    assert b.orphans(10) == [], "b's worker died with it"
    assert a.wait(900) == 0, a.stdout() + a.stderr()

    study = _study(pg.url, "killone")
    assert len(_counted(study)) == 6
    dead = study.trials[killed.number]
    assert dead.state.name == "FAIL"
    reruns = [t for t in study.trials if t.number > killed.number and t.params == killed.params
              and t.state.name in DONE]
    assert reruns, "the killed trial was re-run with the same params by the surviving machine"

    # the killed machine, restarted, resumes: nothing left to train, its MLflow runs are closed
    again = subprocess.run([*NAS, "search", str(spec), "--runs-dir", str(b_home / "runs"), *_args(pg, tracking)],
                           capture_output=True, text=True, timeout=600, cwd=b_home,
                           env={**os.environ, "COLUMNS": "200"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_counted(_study(pg.url, "killone"))) == 6
    runs = _mlflow(tracking.url, "killone")
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    assert len([r for r in runs if r.data.tags.get("nas.kind") == "search"]) == 1


def _running_trial(url: str, name: str, epochs: int = 1) -> Any:
    try:
        study = _study(url, name)
    except KeyError:
        return None
    return next((t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
                 if len(t.intermediate_values) >= epochs), None)


@pytest.mark.slow
def test_postgres_restarted_mid_search_loses_nothing_and_the_search_goes_on(pg, tiny_spec, tmp_path) -> None:
    spec = _spec(tmp_path, tiny_spec, "pgrestart", trials=4, epochs=12)
    home = _machine(tmp_path, "a")
    search = Search(spec, home / "runs", "a", extra=["--storage", pg.url, "--workers", "2"], cwd=home)
    wait_for(search, "a trial training", lambda: _running_trial(pg.url, "pgrestart"), timeout=400)
    pg.stop()
    time.sleep(25)  # longer than a heartbeat's grace: no trial may be judged dead for it
    pg.start()
    assert search.wait(600) == 0, search.stdout() + search.stderr()
    assert "unreachable; waiting" in search.stderr()
    study = _study(pg.url, "pgrestart")
    assert len(_counted(study)) == 4
    assert [t.number for t in study.trials if t.state.name == "FAIL"] == []


@pytest.mark.slow
def test_postgres_that_stays_away_ends_the_search_with_a_clear_message_and_a_rerun_resumes(pg, tiny_spec,
                                                                                          tmp_path) -> None:
    spec = _spec(tmp_path, tiny_spec, "pgaway", trials=3, epochs=12)
    home = _machine(tmp_path, "a")
    args = [*NAS, "search", str(spec), "--runs-dir", str(home / "runs"), "--storage", pg.url]
    env = {**os.environ, "COLUMNS": "200", "NAS_DATABASE_WAIT_S": "6"}
    with (tmp_path / "away.out").open("w") as out, (tmp_path / "away.err").open("w") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=home)
    try:
        deadline = time.monotonic() + 400
        while _running_trial(pg.url, "pgaway") is None:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "away.err").read_text()
            time.sleep(0.2)
        pg.stop()
        code = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
        pg.start()
    stderr = (tmp_path / "away.err").read_text()
    assert code == 2, stderr
    assert "has been unreachable for 6 s" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr

    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=home, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout
    assert len(_counted(_study(pg.url, "pgaway"))) == 3


def test_an_unreachable_or_driverless_postgres_url_is_refused_before_any_training(tiny_spec, tmp_path,
                                                                                    monkeypatch) -> None:
    from tests.servers import free_port

    spec = tiny_spec(name="nopg")
    url = f"postgresql://nas:secret@127.0.0.1:{free_port()}/nas"
    began = time.monotonic()
    r = subprocess.run([*NAS, "search", str(spec), "--runs-dir", str(tmp_path / "runs"), "--storage", url],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot be used" in r.stderr and "is the database server running" in r.stderr
    assert "secret" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - began < 120
    assert not list((tmp_path / "runs").glob("*/best"))

    import importlib.util

    from nas.backends import storage

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(NasError, match=r"psycopg\) is not installed; run `pip install 'nas\[postgres\]'`"):
        storage.make_storage(url)


def test_machines_sharing_a_study_share_its_budget(pg, tiny_spec, tmp_path) -> None:
    loaded = load_spec(tiny_spec(name="budgetshare"))

    def machine(name: str) -> OptunaBackend:
        return OptunaBackend.open(loaded.spec, SearchSpace(loaded.spec), RunDir(tmp_path / name), loaded.hash,
                                  storage=pg.url, new=False, resuming=False)

    first, second = machine("a"), machine("b")
    assert first.budget_began(1000.0, 600) == 1000.0
    assert second.budget_began(1200.0, 600) == 1000.0  # joins with the 400 s that are left
    assert second.budget_began(1700.0, 600) == 1700.0  # run out entirely: a rerun is a new session
    assert first.local is False and first.study_key == second.study_key
    (tmp_path / "c").mkdir()
    own = OptunaBackend.open(loaded.spec, SearchSpace(loaded.spec), RunDir(tmp_path / "c"), loaded.hash,
                             storage=None, new=False, resuming=False)
    assert own.budget_began(1000.0, 600) is None and own.study_key is None  # the run dir's own study


def test_machines_that_start_together_on_an_empty_database_all_get_the_storage(pg) -> None:
    """Each creates Optuna's tables; PostgreSQL refuses all but one CREATE TABLE (found by CI: two `nas search`
    processes started at once). Several at once, in threads with their own connections."""
    import threading

    from nas.backends.storage import make_storage

    for round_ in range(3):
        url = pg.database(f"race{round_}")
        errors: list[BaseException] = []
        go = threading.Barrier(6)

        def connect() -> None:
            try:
                go.wait()
                make_storage(url).engine.dispose()
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=connect) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [], errors
        optuna.create_study(study_name="s", storage=make_storage(url))  # the schema is whole
