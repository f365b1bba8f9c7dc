"""nas.tracking against a real SQLite MLflow store; every assertion reads back through a fresh client."""

from __future__ import annotations

import http.server
import inspect
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nas.tracking as T
from nas.errors import TrackingError

mlflow_tracking = pytest.importorskip("mlflow.tracking")
import mlflow.utils.rest_utils  # noqa: E402,F401  (imported up front so timings below exclude it)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One store per module: creating a SQLite store runs migrations for seconds."""
    runs = tmp_path_factory.mktemp("runs")
    return T.default_tracking_uri(runs), T.default_artifact_root(runs)


@pytest.fixture
def tracker(store: tuple[str, Path], request: pytest.FixtureRequest) -> T.MlflowTracker:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)
    return T.MlflowTracker(store[0], experiment_name=name, artifact_root=store[1])


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "fashion.yaml"
    path.write_text("name: fashion\nsearch:\n  trials: 3\n")
    return path


def client(uri: str) -> Any:
    return mlflow_tracking.MlflowClient(tracking_uri=uri)


def start(tracker: T.MlflowTracker, spec: Path, resume: str | None = None, trials: int = 3) -> str:
    return tracker.start_search(run_name="fashion", spec_path=spec, spec_hash="feedbeef", resume_run_id=resume,
                                params={"sampler": "tpe", "trials": trials, "seed": 0}, tags={"nas.user": "me"})


def parents(uri: str, tracker: T.MlflowTracker) -> list[Any]:
    return list(client(uri).search_runs([tracker.experiment_id], "tags.`nas.kind` = 'search'"))


def test_default_locations_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert T.default_tracking_uri(Path("runs")) == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    assert T.default_tracking_uri(Path("runs")).startswith("sqlite:////")
    assert T.default_artifact_root(Path("runs")) == tmp_path.resolve() / "runs" / "mlartifacts"


def test_import_does_not_load_mlflow() -> None:
    code = "import sys, nas.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parent_run_has_spec_artifacts_hash_and_params(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                       spec: Path) -> None:
    run_id = start(tracker, spec)
    c = client(store[0])
    run = c.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "fashion"
    assert run.data.tags["nas.spec_hash"] == "feedbeef"
    assert run.data.tags["nas.user"] == "me"
    assert run.data.params == {"sampler": "tpe", "trials": "3", "seed": "0"}
    assert run.info.artifact_uri.startswith(store[1].as_uri() + "/"), "artifacts must not land in the cwd"
    assert [f.path for f in c.list_artifacts(run_id, "spec")] == ["spec/fashion.yaml"]
    spec_copy = Path(c.download_artifacts(run_id, "spec/fashion.yaml", str(spec.parent / "dl")))
    assert spec_copy.read_text() == spec.read_text()
    assert Path(c.download_artifacts(run_id, "spec_hash.txt", str(spec.parent))).read_text().strip() == "feedbeef"
    tracker.end_search("FINISHED")
    assert c.get_run(run_id).info.status == "FINISHED"


def test_trials_are_nested_with_params_and_epoch_history(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                         spec: Path) -> None:
    parent = start(tracker, spec)
    params = {"block.0.filters": 32, "lr": 0.001, "act": "relu", "long": "x" * 7000}
    run_id = tracker.start_trial(7, params, {"nas.backend": "optuna"})
    for step in range(5):
        tracker.log_epoch(run_id, step, {"loss": 1.0 / (step + 1), "accuracy": 0.1 * step,
                                         "val_loss": float("nan") if step == 3 else 0.5, "val_accuracy": 0.2})
    tracker.end_trial(run_id, state="finished", reason=None, tags={},
                      metrics={"params_count": 1234, "epochs_run": 5, "flops": float("inf")})
    c = client(store[0])
    run = c.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.run_name == "trial-007"
    assert run.data.tags["nas.backend"] == "optuna"
    assert run.data.params["block.0.filters"] == "32"
    assert run.data.params["lr"] == "0.001"
    assert run.data.params["act"] == "relu"
    assert 0 < len(run.data.params["long"]) <= 6000
    history = c.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert sorted(m.step for m in c.get_metric_history(run_id, "val_loss")) == [0, 1, 2, 4]  # NaN skipped
    assert run.data.metrics["params_count"] == 1234
    assert "flops" not in run.data.metrics
    assert run.data.tags["nas.nonfinite_metrics"] == "flops,val_loss"
    children = c.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [r.info.run_id for r in children] == [run_id]


def steps_of(uri: str, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


def test_epochs_reach_the_store_at_most_every_interval_and_all_at_the_end(
        store: tuple[str, Path], tracker: T.MlflowTracker, spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store write per short epoch was the largest fixed cost of a trial: the first epoch is written at once,
    later ones when EPOCH_WRITE_INTERVAL_S has passed, and end_trial writes the rest, with their own steps."""
    monkeypatch.setattr(T, "EPOCH_WRITE_INTERVAL_S", 3600.0)
    start(tracker, spec)
    run_id = tracker.start_trial(0, {"x": 1}, {})
    tracker.log_epoch(run_id, 1, {"loss": 1.0, "val_accuracy": 0.1})
    assert steps_of(store[0], run_id) == [1]  # the first epoch at once: a store that fails, fails the trial now
    for step in (2, 3):
        tracker.log_epoch(run_id, step, {"loss": 1.0 / step, "val_accuracy": 0.1 * step})
    assert steps_of(store[0], run_id) == [1]  # queued
    monkeypatch.setattr(T, "EPOCH_WRITE_INTERVAL_S", 0.0)  # as if the interval had passed
    tracker.log_epoch(run_id, 4, {"loss": 0.25, "val_accuracy": 0.4})
    assert steps_of(store[0], run_id) == [1, 2, 3, 4]  # the queue with this epoch
    monkeypatch.setattr(T, "EPOCH_WRITE_INTERVAL_S", 3600.0)
    tracker.log_epoch(run_id, 5, {"loss": 0.2, "val_accuracy": float("nan")})
    tracker.end_trial(run_id, state="finished", reason=None, metrics={"best_val_accuracy": 0.4}, tags={})
    c = client(store[0])
    assert steps_of(store[0], run_id) == [1, 2, 3, 4, 5]
    assert [m.value for m in sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)] == \
        pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert steps_of(store[0], run_id, "val_accuracy") == [1, 2, 3, 4]  # NaN skipped, and named
    run = c.get_run(run_id)
    assert run.data.metrics["loss"] == pytest.approx(0.2)  # the latest step, not the order of writes
    assert run.data.metrics["best_val_accuracy"] == 0.4 and run.info.status == "FINISHED"
    assert run.data.tags["nas.nonfinite_metrics"] == "val_accuracy"


@pytest.mark.parametrize("state", ["interrupted", "failed"])
def test_queued_epochs_are_written_when_a_trial_is_cut_off(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                           spec: Path, state: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C, SIGTERM or an error of ours end the trial through end_trial: no queued epoch is lost."""
    monkeypatch.setattr(T, "EPOCH_WRITE_INTERVAL_S", 3600.0)
    start(tracker, spec)
    run_id = tracker.start_trial(0, {"x": 1}, {})
    for step in (1, 2, 3):
        tracker.log_epoch(run_id, step, {"loss": 1.0 / step})
    tracker.end_trial(run_id, state=state, reason="cut off", metrics={}, tags={})
    assert steps_of(store[0], run_id) == [1, 2, 3]
    assert client(store[0]).get_run(run_id).data.tags["nas.state"] == state


@pytest.mark.parametrize(("state", "status"), [("finished", "FINISHED"), ("pruned", "KILLED"),
                                                ("failed", "FAILED"), ("interrupted", "KILLED")])
def test_end_states_map_to_mlflow_statuses(store: tuple[str, Path], tracker: T.MlflowTracker, spec: Path,
                                           state: str, status: str) -> None:
    start(tracker, spec)
    run_id = tracker.start_trial(0, {"x": 1}, {})
    tracker.end_trial(run_id, state=state, reason=f"because {state}", metrics={"val_accuracy": 0.5}, tags={})
    run = client(store[0]).get_run(run_id)
    assert run.info.status == status
    assert run.data.tags["nas.state"] == state
    assert run.data.tags["nas.reason"] == f"because {state}"
    assert run.data.metrics["val_accuracy"] == 0.5


def test_bad_state_and_order_are_programming_errors(tracker: T.MlflowTracker, spec: Path) -> None:
    with pytest.raises(RuntimeError, match="start_search"):
        tracker.start_trial(0, {}, {})
    start(tracker, spec)
    with pytest.raises(ValueError, match="'done'"):
        tracker.end_trial("x", state="done", reason=None, metrics={}, tags={})
    with pytest.raises(ValueError, match="'OK'"):
        tracker.end_search("OK")


def test_resume_reopens_the_same_parent(store: tuple[str, Path], tracker: T.MlflowTracker, spec: Path) -> None:
    first = start(tracker, spec)
    tracker.end_search("KILLED")
    again = T.MlflowTracker(store[0], tracker_name(tracker, store), store[1])
    assert start(again, spec, resume=first, trials=10) == first
    run = client(store[0]).get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.params["trials"] == "3"  # MLflow params are immutable: the new value goes to a tag
    assert run.data.tags["nas.resumed.trials"] == "10"
    assert run.data.tags["nas.resumes"] == "1"
    assert [r.info.run_id for r in parents(store[0], tracker)] == [first]


def tracker_name(tracker: T.MlflowTracker, store: tuple[str, Path]) -> str:
    return str(client(store[0]).get_experiment(tracker.experiment_id).name)


def test_resume_of_a_missing_run_starts_a_new_parent(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                     spec: Path) -> None:
    missing = "0" * 32
    run_id = start(tracker, spec, resume=missing)
    assert run_id != missing
    assert client(store[0]).get_run(run_id).data.tags["nas.previous_parent_run_id"] == missing


def test_close_stale_trials_kills_running_children(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                   spec: Path) -> None:
    parent = start(tracker, spec)
    done = tracker.start_trial(0, {"x": 1}, {})
    tracker.end_trial(done, state="finished", reason=None, metrics={}, tags={})
    stale = tracker.start_trial(1, {"x": 2}, {})
    tracker.log_epoch(stale, 0, {"loss": 1.0})  # then the process is SIGKILLed
    resumed = T.MlflowTracker(store[0], tracker_name(tracker, store), store[1])
    start(resumed, spec, resume=parent)
    assert resumed.close_stale_trials() == 1
    c = client(store[0])
    assert c.get_run(stale).info.status == "KILLED"
    assert c.get_run(stale).data.tags["nas.state"] == "interrupted"
    assert c.get_run(done).info.status == "FINISHED"
    assert c.get_run(parent).info.status == "RUNNING"
    assert resumed.close_stale_trials() == 0


def test_log_artifacts_on_the_parent(store: tuple[str, Path], tracker: T.MlflowTracker, spec: Path,
                                     tmp_path: Path) -> None:
    parent = start(tracker, spec)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "arch.json").write_text("{}")
    (tmp_path / "leaderboard.csv").write_text("trial,val\n")
    tracker.log_artifacts([tmp_path / "best", tmp_path / "leaderboard.csv"], artifact_path="results")
    c = client(store[0])
    assert sorted(f.path for f in c.list_artifacts(parent, "results")) == ["results/best", "results/leaderboard.csv"]
    assert [f.path for f in c.list_artifacts(parent, "results/best")] == ["results/best/arch.json"]
    assert tracker.run_url(parent) is None  # a local store has no URL


def test_store_failures_become_tracking_errors(store: tuple[str, Path], tracker: T.MlflowTracker,
                                               spec: Path) -> None:
    start(tracker, spec)
    with pytest.raises(TrackingError, match="could not log epoch 0"):
        tracker.log_epoch("f" * 32, 0, {"loss": 1.0})
    name = tracker_name(tracker, store)
    client(store[0]).delete_experiment(tracker.experiment_id)
    with pytest.raises(TrackingError, match="is deleted. Fix: restore it"):
        T.MlflowTracker(store[0], name, store[1])


def _shape(sig: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_null_tracker_answers_everything_a_search_can_call() -> None:
    """`tracking.enabled: false` swaps in NullTracker: a method missing there (or taking other arguments)
    breaks only those searches, so every method of the real tracker must exist on it, called the same way."""
    public = {n for n, v in vars(T.MlflowTracker).items() if not n.startswith("_") and inspect.isfunction(v)}
    protocol = {n for n, v in vars(T.Tracker).items() if not n.startswith("_") and inspect.isfunction(v)}
    assert public == protocol, "MlflowTracker and the Tracker protocol list different methods"
    for name in sorted(protocol):
        want = _shape(inspect.signature(getattr(T.Tracker, name)))
        assert _shape(inspect.signature(getattr(T.MlflowTracker, name))) == want, name
        assert _shape(inspect.signature(getattr(T.NullTracker, name))) == want, name


def test_first_store_creation_is_quiet(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; import nas.tracking as T; "
            "T.MlflowTracker(T.default_tracking_uri(Path(sys.argv[1])), 'quiet')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert "INFO" not in done.stderr and done.stdout == "", done.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


# --- check_tracking_uri -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_stub(request: pytest.FixtureRequest) -> Iterator[str]:
    code: int = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"experiments": []}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_closed_port_fails_fast_with_the_fix() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(TrackingError) as err:
        T.check_tracking_uri(uri)
    assert time.monotonic() - began < 3
    assert uri in str(err.value) and "connection refused" in str(err.value)
    assert "start the server" in str(err.value) and "--tracking-uri" in str(err.value)


def test_tracker_on_a_dead_server_fails_fast() -> None:
    began = time.monotonic()
    with pytest.raises(TrackingError):
        T.MlflowTracker(f"http://127.0.0.1:{free_port()}", "x")
    assert time.monotonic() - began < 3


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        began = time.monotonic()
        with pytest.raises(TrackingError, match="answered within 1 s"):
            T.check_tracking_uri(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=1)
        assert time.monotonic() - began < 4


@pytest.mark.parametrize("http_stub", [200], indirect=True)
def test_answering_server_passes(http_stub: str) -> None:
    T.check_tracking_uri(http_stub)


@pytest.mark.parametrize("http_stub", [404], indirect=True)
def test_non_mlflow_server_fails(http_stub: str) -> None:
    with pytest.raises(TrackingError, match="HTTP 404; is it an MLflow server"):
        T.check_tracking_uri(http_stub)


@pytest.mark.parametrize("http_stub", [401], indirect=True)
def test_refused_credentials_name_the_env_vars(http_stub: str) -> None:
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_USERNAME"):
        T.check_tracking_uri(http_stub)


def test_sqlite_parent_folders_are_created(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "mlflow.db"
    T.check_tracking_uri(f"sqlite:///{db}")
    assert db.parent.is_dir() and not db.exists() and list(db.parent.iterdir()) == []


def test_sqlite_under_a_regular_file_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/file/runs/mlflow.db"
    with pytest.raises(TrackingError, match=r"'.*file' is a file, not a folder") as err:
        T.check_tracking_uri(uri)
    assert uri in str(err.value) and "tracking.uri" in str(err.value)


def test_sqlite_folder_or_non_database_fails(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="is a folder"):
        T.check_tracking_uri(f"sqlite:///{tmp_path}")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 10)
    with pytest.raises(TrackingError, match="not a writable SQLite database"):
        T.check_tracking_uri(f"sqlite:///{tmp_path}/junk.db")


def test_file_store_is_refused_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError, match="MLFLOW_ALLOW_FILE_STORE"):
        T.check_tracking_uri(tmp_path.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    T.check_tracking_uri(tmp_path.as_uri())


def test_parents_that_raced_at_the_start_merge_into_the_oldest(store: tuple[str, Path], tracker: T.MlflowTracker,
                                                               spec: Path) -> None:
    """Two machines each created a parent before either saw the other's (both joined alone): the machine that
    stops last merges every parent of the study into the oldest, trial runs included; one that still has
    company merges only its own."""
    name = tracker_name(tracker, store)
    a, b, c = tracker, T.MlflowTracker(store[0], name, store[1]), T.MlflowTracker(store[0], name, store[1])
    first, second, third = start(a, spec), start(b, spec), start(c, spec)
    a_trial, b_trial, c_trial = a.start_trial(0, {"x": 1}, {}), b.start_trial(1, {"x": 2}, {}), c.start_trial(2, {}, {})
    key = "study-key-1"
    # the race: each joins before the others' parents carry the study's tag, so each keeps its own
    for t in (c, b, a):
        client(store[0]).set_tag(t.parent_run_id, "nas.kind", "pending")
    for t, own in ((a, first), (b, second), (c, third)):
        client(store[0]).set_tag(own, "nas.kind", "search")
        assert t.join_shared_parent(key) == own
        client(store[0]).set_tag(own, "nas.kind", "pending")
    for own in (first, second, third):
        client(store[0]).set_tag(own, "nas.kind", "search")

    assert b.join_shared_parent(key) == first  # b stops while a and c still run: only b's parent merges
    assert {r.info.run_id for r in parents(store[0], a)} == {first, third}
    assert client(store[0]).get_run(b_trial).data.tags["mlflow.parentRunId"] == first

    assert a.join_shared_parent(key, everyone=True) == first  # the last to stop: c was killed, its parent merges
    assert [r.info.run_id for r in parents(store[0], a)] == [first]
    for trial in (a_trial, b_trial, c_trial):
        assert client(store[0]).get_run(trial).data.tags["mlflow.parentRunId"] == first
    assert client(store[0]).get_run(second).info.lifecycle_stage == "deleted"
