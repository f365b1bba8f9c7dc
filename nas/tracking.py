"""MLflow tracking: one parent run per search, one nested child run per trial.

Only `MlflowClient` with explicit run ids is used (never the fluent `mlflow.start_run`), and `mlflow`
is imported inside the functions that need it, so `import nas.tracking` stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nas.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_log = logging.getLogger(__name__)

TRIAL_STATES = {"finished": "FINISHED", "pruned": "KILLED", "paused": "KILLED", "diverged": "FAILED",
                "failed": "FAILED", "interrupted": "KILLED"}  # nas.trial.TrialState -> MLflow run status
SEARCH_STATUSES = ("FINISHED", "KILLED", "FAILED")
_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3.17
_MAX_TAG_LEN = 8000  # MAX_TAG_VAL_LENGTH
_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
_URI_FIX = "check --tracking-uri, tracking.uri in the spec, or --runs-dir for the default store"
#: A trial's epoch metrics reach the store at most this often, and always when the trial ends. One write costs
#: 10-20 ms on SQLite (hundreds when the disk is busy) while the worker waits between epochs, so epochs of a
#: second or less paid it every time. The first epoch of a run is written at once: a store that cannot take it
#: fails the trial then, not at its end. The rest wait in memory at most this long: Ctrl-C, SIGTERM and errors
#: end the trial, which writes them; a kill -9 loses them with the trial itself, which a resume runs again.
EPOCH_WRITE_INTERVAL_S = 5.0
_HTTP = ("http://", "https://")


def default_tracking_uri(runs_dir: Path) -> str:
    """The SQLite store every search under `runs_dir` shares: `sqlite:////abs/runs/mlflow.db`."""
    return f"sqlite:///{(Path(runs_dir).resolve() / 'mlflow.db').as_posix()}"


def default_artifact_root(runs_dir: Path) -> Path:
    return Path(runs_dir).resolve() / "mlartifacts"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the cwd for three slashes); None for memory."""
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def _fail(uri: str, what: str, fix: str) -> TrackingError:
    return TrackingError(f"MLflow tracking store {uri!r} cannot be used: {what}. Fix: {fix}.")


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast, before any training, when the store cannot be reached or written.

    SQLite: parent folders are created; a path under a regular file, a folder, an unwritable folder or
    a file that is not a database fails. HTTP: one request, no retries, bounded by `timeout_s`.
    """
    if uri.startswith("sqlite:"):
        _check_sqlite(uri)
    elif uri.startswith(_HTTP):
        _check_http(uri, timeout_s)
    elif ((uri.startswith("file:") or "://" not in uri)
          and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true")):
        raise _fail(uri, "MLflow 3.17 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true",
                    f"use a SQLite store such as sqlite:///runs/mlflow.db ({_URI_FIX})")


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise _fail(uri, f"{str(blocker)!r} is a file, not a folder, so the database cannot be created under it",
                    f"point it at a writable folder ({_URI_FIX})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(uri, f"cannot create the folder {str(path.parent)!r} ({e.strerror or e})",
                    f"point it at a writable location ({_URI_FIX})") from e
    if path.is_dir():
        raise _fail(uri, f"{str(path)!r} is a folder, not a database file",
                    f"name a file such as {str(path / 'mlflow.db')!r} ({_URI_FIX})")
    try:
        if path.exists():
            with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)) as con:
                con.execute("PRAGMA schema_version").fetchone()
        else:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".nas-write-check-"):
                pass
    except (OSError, sqlite3.Error) as e:
        raise _fail(uri, f"{str(path)!r} is not a writable SQLite database ({e})",
                    f"point it at a writable location or remove the file ({_URI_FIX})") from e


def _check_http(uri: str, timeout_s: float) -> None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    endpoint = "/api/2.0/mlflow/experiments/search"
    server_fix = f"start the server (nas ui, or mlflow server) or {_URI_FIX}"
    try:
        resp = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, backoff_factor=0,
                            backoff_jitter=0, timeout=timeout_s, params={"max_results": 1})
    except Exception as e:  # MLflow wraps requests' refusals and timeouts in MlflowException text
        text = str(e).lower()
        what = ("nothing is listening there (connection refused)" if "refused" in text
                else "the host name does not resolve" if "nameresolution" in text
                else f"no MLflow server answered within {timeout_s:g} s" if "timed out" in text or "timeout" in text
                else f"the request failed ({str(e)[:300]})")
        raise _fail(uri, what, server_fix) from e
    if resp.status_code in (401, 403):
        raise _fail(uri, f"the server refused access (HTTP {resp.status_code})",
                    "set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    if resp.status_code != 200:
        raise _fail(uri, f"{endpoint} answered HTTP {resp.status_code}; is it an MLflow server?", server_fix)


def ui_command(tracking_uri: str, artifact_root: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """argv for an MLflow UI over this store (one worker). Runs logged here keep their file:// artifact
    URIs and are read from disk; experiments created through the server are proxied into `artifact_root`."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--artifacts-destination",
            str(Path(artifact_root).resolve()), "--host", host, "--port", str(port), "--workers", "1"]


class Tracker(Protocol):
    """The seam the search loop talks to."""

    def start_search(self, *, run_name: str, spec_path: Path, spec_hash: str, resume_run_id: str | None,
                     params: dict[str, Any], tags: dict[str, str], run_uid: str | None = None) -> str: ...
    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None: ...
    def end_trial(self, run_id: str, *, state: str, reason: str | None, metrics: dict[str, float],
                  tags: dict[str, str]) -> None: ...
    # on the parent run, or on the trial run `run_id`
    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None, run_id: str | None = None) -> None: ...
    def log_search_metrics(self, metrics: dict[str, float]) -> None: ...
    def tag_trials(self, tags: dict[int, dict[str, str]]) -> None: ...  # trial number -> tags for its run
    def end_search(self, status: str) -> None: ...
    def close_stale_trials(self, interrupted: Collection[int] = (), owner: str | None = None) -> int: ...
    # one parent run for every machine of a study
    def join_shared_parent(self, study_key: str, everyone: bool = False) -> str: ...
    def run_url(self, run_id: str) -> str | None: ...


class NullTracker:
    """Tracking disabled: every call does nothing."""

    def start_search(self, *, run_name: str, spec_path: Path, spec_hash: str, resume_run_id: str | None,
                     params: dict[str, Any], tags: dict[str, str], run_uid: str | None = None) -> str:
        return ""

    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> str:
        return ""

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        pass

    def end_trial(self, run_id: str, *, state: str, reason: str | None, metrics: dict[str, float],
                  tags: dict[str, str]) -> None:
        pass

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None, run_id: str | None = None) -> None:
        pass

    def log_search_metrics(self, metrics: dict[str, float]) -> None:
        pass

    def tag_trials(self, tags: dict[int, dict[str, str]]) -> None:
        pass

    def end_search(self, status: str) -> None:
        pass

    def close_stale_trials(self, interrupted: Collection[int] = (), owner: str | None = None) -> int:
        return 0

    def join_shared_parent(self, study_key: str, everyone: bool = False) -> str:
        return ""

    def run_url(self, run_id: str) -> str | None:
        return None


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


def _finite(metrics: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Split metrics into finite floats and the names of NaN/inf/non-numeric ones (MLflow stores NaN,
    but clamps inf to 1.8e308, which wrecks every chart)."""
    good: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            good[key] = float(value)
        except (TypeError, ValueError):
            good[key] = math.nan
    return {k: v for k, v in good.items() if math.isfinite(v)}, [k for k, v in good.items() if not math.isfinite(v)]


def _create_sqlite_store(path: Path) -> None:
    """Create and migrate a new SQLite store under a temporary name, then link it into place.

    MLflow migrates a fresh store in place for seconds; a kill or Ctrl-C then left a half-migrated mlflow.db
    that every later search failed on. Now such a kill leaves only the temporary file. `os.link` never
    replaces: when another search created the store meanwhile, its store stays and ours is dropped.
    """
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    prefix = f".{path.name}.new-"
    for old in path.parent.glob(f"{prefix}*"):  # left by a killed creation (with its -journal), if that is gone
        pid = old.name[len(prefix):].split("-")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    tmp = path.with_name(f"{prefix}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp.resolve().as_posix()}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class MlflowTracker:
    """Tracker over an MLflow store; a search's trials are nested under one parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None):
        check_tracking_uri(tracking_uri)
        for name in ("mlflow.store.db.utils", "alembic"):  # DB creation/migration INFO lines; warnings still show
            logging.getLogger(name).setLevel(logging.WARNING)
        if tracking_uri.startswith(_HTTP):  # bound MLflow's retries (7, ~4 min by default), stop its "View
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # run at" prints (and the get_run
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # each costs); the user's values win
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = tracking_uri
        self._parent: str | None = None
        self._skipped: dict[str, set[str]] = {}
        self._epochs: dict[str, list[Any]] = {}  # run id -> epoch metrics not written yet (mlflow Metric)
        self._written: dict[str, float] = {}  # run id -> when its epoch metrics were last written (monotonic)
        with self._guard("open the store"):
            db = _sqlite_path(tracking_uri) if tracking_uri.startswith("sqlite:") else None
            if db is not None and not db.exists():
                _create_sqlite_store(db)
            from mlflow.tracking import MlflowClient

            self._client: MlflowClient = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment_name, artifact_root)

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as e:  # requests' errors are OSErrors too
            raise TrackingError(f"MLflow tracking at {self.uri!r}: could not {action}: {e}. Fix: check that "
                                f"the store is reachable and writable ({_URI_FIX}).") from e

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if not self.uri.startswith(_HTTP):
                db = _sqlite_path(self.uri) if self.uri.startswith("sqlite:") else None
                root = artifact_root or (db.parent / "mlartifacts" if db else None)
                if root is not None:
                    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
                    location = (Path(root).resolve() / safe).as_uri()
            try:
                # the tag makes MLflow 3's UI open it on its runs ("Model training"), not its GenAI overview
                return self._client.create_experiment(name, artifact_location=location,
                                                      tags={"mlflow.experimentKind": "custom_model_development"})
            except MlflowException:  # created by a concurrent process meanwhile
                exp = self._client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} at {self.uri!r} is deleted. Fix: restore it "
                                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or choose "
                                f"another experiment name in the spec.")
        return str(exp.experiment_id)

    def _batch(self, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
               tags: dict[str, str] | None = None, steps: list[Any] | None = None) -> None:
        """One log_batch (more only past MLflow's batch limits): `metrics` at step 0, `steps` (mlflow Metric)
        as they are."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [*(steps or []), *(Metric(k, v, now, 0) for k, v in (metrics or {}).items())]
        ps = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:_MAX_TAG_LEN]) for k, v in (tags or {}).items()]
        while ms or ps or ts:  # one call unless a batch limit is exceeded
            self._client.log_batch(run_id, metrics=ms[:900], params=ps[:_BATCH], tags=ts[:_BATCH])
            ms, ps, ts = ms[900:], ps[_BATCH:], ts[_BATCH:]

    @property
    def parent_run_id(self) -> str:
        if self._parent is None:
            raise RuntimeError("start_search() must be called before any other Tracker method")
        return self._parent

    def start_search(self, *, run_name: str, spec_path: Path, spec_hash: str, resume_run_id: str | None,
                     params: dict[str, Any], tags: dict[str, str], run_uid: str | None = None) -> str:
        """`run_uid` names the run dir: a search killed after creating its parent run but before the run dir
        remembered the run's id finds that parent again by it, instead of leaving it RUNNING beside a second one."""
        with self._guard(f"start the search run {run_name!r}"):
            if not resume_run_id and run_uid:
                resume_run_id = self._parent_of(run_uid)
            run = self._reopen(resume_run_id) if resume_run_id else None
            all_tags = {**tags, "nas.kind": "search", "nas.spec_hash": spec_hash}
            if run_uid:
                all_tags["nas.run_uid"] = run_uid  # set at creation, so a parent never exists without it
            if run is None:
                if resume_run_id:
                    all_tags["nas.previous_parent_run_id"] = resume_run_id
                self._parent = self._client.create_run(self.experiment_id, tags=all_tags, run_name=run_name).info.run_id
                self._batch(self._parent, params=params)
            else:
                self._parent = run.info.run_id
                old = run.data.params
                changed = {f"nas.resumed.{k}": _param_value(v) for k, v in params.items()
                           if k in old and old[k] != _param_value(v)}
                resumes = int(run.data.tags.get("nas.resumes", "0")) + 1
                self._batch(self._parent, params={k: v for k, v in params.items() if k not in old},
                            tags={**all_tags, **changed, "nas.resumes": str(resumes)})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "spec_hash.txt").write_text(spec_hash + "\n")
                self._client.log_artifact(self._parent, str(Path(tmp) / "spec_hash.txt"))
            self._client.log_artifact(self._parent, str(spec_path), artifact_path="spec")
            return self._parent

    def join_shared_parent(self, study_key: str, everyone: bool = False) -> str:
        """Machines that start one shared search at the same moment may each create a parent run before they see
        each other's. Each parent is tagged with the study; the oldest (by start time, then id) is the search's, on
        every machine alike. A machine whose own parent is not that one merges its own into it: its trial runs
        are nested under the oldest (the nesting is only the `mlflow.parentRunId` tag) and it is deleted.
        Machines join when they start and when they stop; the last one to stop merges `everyone`'s, so two
        parents that raced at the start end as one even when the machine of one of them was killed."""
        mine = self.parent_run_id
        with self._guard("find the search's parent run"):
            self._client.set_tag(mine, "nas.study", study_key)
            query = f"tags.`nas.study` = '{study_key}' and tags.`nas.kind` = 'search'"
            found = self._client.search_runs([self.experiment_id], query, max_results=100)
            oldest = min(found, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
            if oldest is None:
                return mine
            for other in found:
                if other.info.run_id != oldest.info.run_id and (everyone or other.info.run_id == mine):
                    self._merge_parent(other.info.run_id, oldest.info.run_id)
            if oldest.info.run_id != mine:
                self._parent = oldest.info.run_id
                if oldest.info.status != "RUNNING":
                    self._client.update_run(self._parent, status="RUNNING")
        return self.parent_run_id

    def _merge_parent(self, young: str, into: str) -> None:
        children = f"tags.`mlflow.parentRunId` = '{young}'"
        while runs := self._client.search_runs([self.experiment_id], children, max_results=500):
            for run in runs:
                self._client.set_tag(run.info.run_id, "mlflow.parentRunId", into)
        self._client.delete_run(young)

    def _parent_of(self, run_uid: str) -> str | None:
        query = f"tags.`nas.run_uid` = '{run_uid}' and tags.`nas.kind` = 'search'"
        found = self._client.search_runs([self.experiment_id], query, max_results=1,
                                         order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None

    def _reopen(self, run_id: str) -> Any:
        """The old parent back in RUNNING, or None when it is gone, deleted or in another experiment."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            _log.warning("MLflow run %s cannot be resumed (missing, deleted or in another experiment); "
                         "starting a new parent run", run_id)
            return None
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        return run

    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> str:
        parent = self.parent_run_id
        with self._guard(f"start trial {number}"):
            run_tags = {**tags, "mlflow.parentRunId": parent, "nas.kind": "trial", "nas.trial": str(number)}
            run_id: str = self._client.create_run(self.experiment_id, tags=run_tags,
                                                  run_name=f"trial-{number:03d}").info.run_id
            if params:
                self._batch(run_id, params=params)
            return run_id

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Queue one epoch's metrics; write the run's queue when EPOCH_WRITE_INTERVAL_S has passed since its last
        write (at once for its first epoch). end_trial writes whatever is left."""
        from mlflow.entities import Metric

        good, bad = _finite(metrics)
        if bad:
            self._skipped.setdefault(run_id, set()).update(bad)
        if good:
            now = int(time.time() * 1000)  # when the epoch ended, not when it was written
            self._epochs.setdefault(run_id, []).extend(Metric(k, v, now, step) for k, v in good.items())
        last = self._written.get(run_id)
        if last is None or time.monotonic() - last >= EPOCH_WRITE_INTERVAL_S:
            with self._guard(f"log epoch {step}"):
                self._write_epochs(run_id)

    def _write_epochs(self, run_id: str) -> None:
        queued = self._epochs.get(run_id)
        if queued:
            self._batch(run_id, steps=queued)
        self._epochs.pop(run_id, None)  # only once written: a failed write keeps them for end_trial to retry
        self._written[run_id] = time.monotonic()

    def end_trial(self, run_id: str, *, state: str, reason: str | None, metrics: dict[str, float],
                  tags: dict[str, str]) -> None:
        if state not in TRIAL_STATES:
            raise ValueError(f"state must be one of {sorted(TRIAL_STATES)}, but got {state!r}")
        good, bad = _finite(metrics)
        skipped = sorted(self._skipped.pop(run_id, set()) | set(bad))
        all_tags = {**tags, "nas.state": state, "nas.reason": reason or ""}
        if skipped:
            all_tags["nas.nonfinite_metrics"] = ",".join(skipped)
        with self._guard(f"end the trial run {run_id}"):
            self._batch(run_id, metrics=good, tags=all_tags, steps=self._epochs.get(run_id))  # the queued epochs too
            self._epochs.pop(run_id, None)
            self._written.pop(run_id, None)
            self._client.set_terminated(run_id, status=TRIAL_STATES[state])

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None, run_id: str | None = None) -> None:
        target = run_id or self.parent_run_id
        for path in paths:
            with self._guard(f"log the artifact {str(path)!r}"):
                self._client.log_artifact(target, str(path), artifact_path=artifact_path)

    def log_search_metrics(self, metrics: dict[str, float]) -> None:
        """Search-level results (best val/test accuracy, best trial) on the parent run."""
        with self._guard("log the search results"):
            self._batch(self.parent_run_id, metrics=metrics)

    def tag_trials(self, tags: dict[int, dict[str, str]]) -> None:
        """Tag the runs of the given trial numbers (the Pareto front's, at the end of a search): every run of
        this parent with that nas.trial tag, whichever machine ran it."""
        with self._guard("tag the trial runs"):
            query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
            token = None
            while True:
                page = self._client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
                for run in page:
                    number = run.data.tags.get("nas.trial")
                    if number is not None and number.isdigit() and int(number) in tags:
                        self._batch(run.info.run_id, tags=tags[int(number)])
                token = page.token
                if not token:
                    break

    def end_search(self, status: str) -> None:
        if status not in SEARCH_STATUSES:
            raise ValueError(f"status must be one of {SEARCH_STATUSES}, but got {status!r}")
        with self._guard("end the search run"):
            self._client.set_terminated(self.parent_run_id, status=status)

    def close_stale_trials(self, interrupted: Collection[int] = (), owner: str | None = None) -> int:
        """Trial runs a dead search left behind become KILLED with nas.state `interrupted`: those still RUNNING,
        and those of the `interrupted` trial numbers (the backend's word). A kill between a trial's MLflow end and
        the backend recording it leaves a run that says finished for a trial the backend re-runs; it must not
        count twice. `owner` (a run dir's uid): only that run dir's runs, when machines share the parent run and
        the others' running trials are alive."""
        parent = self.parent_run_id
        closed = 0
        with self._guard("close stale trial runs"):
            running = f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'"
            if owner:
                running += f" and tags.`nas.owner` = '{owner}'"
            while stale := self._client.search_runs([self.experiment_id], running, max_results=500):
                for run in stale:
                    self._close_interrupted(run.info.run_id)
                closed += len(stale)
            for number in interrupted:
                query = f"tags.`mlflow.parentRunId` = '{parent}' and tags.`nas.trial` = '{int(number)}'"
                for run in self._client.search_runs([self.experiment_id], query, max_results=500):
                    if run.info.status != "KILLED" or run.data.tags.get("nas.state") != "interrupted":
                        self._close_interrupted(run.info.run_id)
                        closed += 1
        return closed

    def _close_interrupted(self, run_id: str) -> None:
        self._batch(run_id, tags={"nas.state": "interrupted", "nas.reason": "the search process ended while it ran"})
        self._client.set_terminated(run_id, status="KILLED")

    def run_url(self, run_id: str) -> str | None:
        """A browser URL for a run on an HTTP tracking server; None for local stores."""
        if not self.uri.startswith(_HTTP) or not run_id:
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
