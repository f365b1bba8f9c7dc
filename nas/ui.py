"""`nas ui`: the MLflow UI over the runs' store, opened straight on a search's trials.

MLflow 3.17 opens an experiment on its GenAI "Overview" page. What its UI reads, checked in the 3.17 bundle
(mlflow/server/js/build): the `workflowType=machine_learning` URL parameter (or, when the workflow switcher is
off, the experiment tag `mlflow.experimentKind`, `custom_model_development` opening the runs tab); and a
shared view (`?viewStateShareKey=K` + the experiment tag `mlflow.sharedViewState.K`, JSON of the runs page's
search facets and UI state: filter, sort, selected columns). So the link shows the trials of one search, best
first, with `val_accuracy` and the main params as columns.

The server runs under a small guard process that leads its own process group: stopping `nas ui` (Ctrl-C,
SIGTERM, SIGHUP) ends the whole group, and the guard gets SIGTERM from the kernel if `nas ui` dies outright
(PR_SET_PDEATHSIG), so no `mlflow server` is left orphaned on the port.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import NasError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Target:
    """What the link opens: one search's parent run in its experiment."""

    run_dir: Path
    experiment_id: str
    parent_run_id: str
    view_key: str


def latest_run_dir(runs_dir: Path) -> Path | None:
    """The run directory whose run.json (rewritten on every start and resume) is newest and names an MLflow run."""
    found: list[tuple[float, Path]] = []
    for meta in Path(runs_dir).glob("*/run.json"):
        try:
            if json.loads(meta.read_text()).get("mlflow_parent_run_id"):
                found.append((meta.stat().st_mtime, meta.parent))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    if not Path(run_dir).is_dir():
        raise NasError(f"{run_dir}: no such run directory; give one made by `nas search`, e.g. runs/<name>")
    try:
        return dict(json.loads((Path(run_dir) / "run.json").read_text()))
    except (OSError, ValueError):
        raise NasError(f"{run_dir}: not a search's run directory (no readable run.json); give one made by "
                       "`nas search`, e.g. runs/<name>") from None


def _leaderboard_columns(run_dir: Path) -> tuple[list[str], list[str]]:
    """(metric names, param names) worth a column: the objectives and the params that vary, globals first."""
    import pandas as pd

    try:
        df = pd.read_csv(run_dir / "leaderboard.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return ["val_accuracy"], []
    params = [c for c in df.columns if c.startswith("param.") and df[c].nunique(dropna=True) > 1]
    params = sorted(params, key=lambda c: c.startswith("param.block."))  # stable: globals first, in CSV order
    return ["val_accuracy", "params", "epochs_run"], [c.removeprefix("param.") for c in params[:8]]


def view_state(parent_run_id: str, metrics: list[str], params: list[str], order_by: str = "val_accuracy",
               ascending: bool = False) -> dict[str, Any]:
    """The runs page's state (search facets + UI state fields MLflow 3.17 picks from a shared view)."""
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{order_by}`",
        "orderByAsc": ascending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": ["tags.`nas.state`", *(f"metrics.`{m}`" for m in metrics),
                            *(f"params.`{p}`" for p in params)],
        "runsExpanded": {parent_run_id: True},
        "runsHiddenMode": "SHOW_ALL",
        "viewMaximized": False,
        "runListHidden": False,
    }


def mark_experiment(client: Any, run_dir: Path, parent_run_id: str) -> Target:
    """Tag the search's experiment as model training, describe it, and store the trials view; idempotent."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as e:
        raise NasError(f"{run_dir}: its MLflow run {parent_run_id} is not in this store ({e.message}). Fix: pass "
                       "the store it was logged to with --tracking-uri, or --runs-dir") from None
    exp_id = parent.info.experiment_id
    metrics, params = _leaderboard_columns(run_dir)
    order_by, ascending = _primary(run_dir)
    state = json.dumps(view_state(parent_run_id, [order_by, *[m for m in metrics if m != order_by]], params,
                                  order_by, ascending), sort_keys=True)
    key = "nas-" + hashlib.sha256(state.encode()).hexdigest()[:16]
    exp = client.get_experiment(exp_id)
    tags = dict(exp.tags)
    if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    if not tags.get(DESCRIPTION_TAG):
        client.set_experiment_tag(exp_id, DESCRIPTION_TAG, describe(parent))
    if tags.get(SHARED_VIEW_PREFIX + key) != state:
        client.set_experiment_tag(exp_id, SHARED_VIEW_PREFIX + key, state)
    return Target(run_dir, exp_id, parent_run_id, key)


def _primary(run_dir: Path) -> tuple[str, bool]:
    try:
        from nas.spec.loader import parse_spec

        spec = parse_spec((run_dir / "spec.yaml").read_text(), str(run_dir / "spec.yaml"))
        o = spec.search.objectives[0]
        return o.metric, o.resolved_direction == "minimize"
    except Exception:
        return "val_accuracy", False


def describe(parent: Any) -> str:
    p, t = parent.data.params, parent.data.tags
    lines = [f"nas search **{parent.info.run_name}**: image-classification CNNs trained by a neural architecture "
             "search; one parent run per search, one nested run per trial (model training)."]
    for key, label in (("data", "data"), ("backend", "backend"), ("trials", "trials"), ("epochs", "epochs per trial"),
                       ("space_dims", "search-space dimensions")):
        if key in p:
            lines.append(f"- {label}: {p[key]}")
    if "nas.run_dir" in t:
        lines.append(f"- run directory: `{t['nas.run_dir']}` (spec.yaml, leaderboard.csv, best/, report/)")
    return "\n".join(lines)


def runs_url(base: str, target: Target) -> str:
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "viewStateShareKey": target.view_key})
    return f"{base.rstrip('/')}/#/experiments/{target.experiment_id}/runs?{query}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")))
    exps = urllib.parse.quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


# --- the server ------------------------------------------------------------------------------------------


def check_port(host: str, port: int, cmd: str = "nas ui") -> None:
    """Fail before starting anything when the port is taken (bound like uvicorn binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise NasError(busy_message(host, port, e.strerror or str(e), cmd)) from None


def busy_message(host: str, port: int, why: str, cmd: str = "nas ui") -> str:
    return (f"{cmd}: cannot listen on {host}:{port} ({why}); another program (perhaps an earlier `{cmd}`) "
            f"holds port {port}. Fix: pass a free port, e.g. `{cmd} --port {port + 1}`, or stop what listens "
            f"there (`ss -ltnp 'sport = :{port}'` shows it)")


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop the group
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Server:
    """`mlflow server` under the guard (see `guard`), its output kept for error messages."""

    def __init__(self, argv: list[str], host: str, port: int, label: str = "nas ui: the MLflow server"):
        self.host, self.port, self.label = host, port, label
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.proc = subprocess.Popen([sys.executable, "-m", "nas.ui", "--guard", *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, preexec_fn=_set_pdeathsig)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip())

    def wait_ready(self, url: str, timeout_s: float = 120.0, probe: str = "/health") -> None:
        """Until the server answers; NasError if it exits first or never answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                raise NasError(self.failure())
            try:
                with urllib.request.urlopen(url.rstrip("/") + probe, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise NasError(f"{self.label} did not answer at {url} within {timeout_s:.0f} s. Its last "
                       f"output:\n{self._last()}\nFix: rerun with another --port, or check the store")

    def failure(self) -> str:
        text = self._last()
        if "address already in use" in text.lower() or "errno 98" in text.lower():
            return busy_message(self.host, self.port, "address already in use", self.label.split(":")[0])
        lines = [line.strip() for line in self.tail if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        cause = (errors or lines or ["no output"])[-1]
        return (f"{self.label} for {self.host}:{self.port} exited with code {self.proc.returncode} "
                f"before answering: {cause[:500]}. Fix: check the tracking store it serves (--tracking-uri, "
                f"--runs-dir), or try another port (--port {self.port + 1})")

    def _last(self) -> str:
        return "\n".join(list(self.tail)[-15:]) or "(no output)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the guard's children, should it have died
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def serve(argv: list[str], host: str, port: int, on_ready: Callable[[str], None], probe: str = "/health",
          label: str = "nas ui: the MLflow server") -> int:
    """Run the server until Ctrl-C, SIGTERM or SIGHUP (each stops it: exit 130), or until it exits by itself."""
    check_port(host, port, label.split(":")[0])
    base = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"
    stopped: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in sigs}
    server: Server | None = None
    try:
        server = Server(argv, host, port, label)
        server.wait_ready(base, probe=probe)
        on_ready(base)
        code = server.proc.wait()
        raise NasError(f"{label} on port {port} stopped by itself (exit {code}). Its last "
                       f"output:\n{server._last()}")
    except KeyboardInterrupt:
        return 130
    finally:
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        if server is not None:
            server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def guard(argv: list[str]) -> int:
    """The server's group leader: runs `argv` in its group; a signal (or the parent's death) ends the group."""
    stopping: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopping:
            stopping.append(signum)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(os.getpgrp(), signal.SIGTERM)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    child = subprocess.Popen(argv)
    if os.getppid() == 1:  # the parent died before the death signal was armed
        stop(signal.SIGTERM, None)
    while True:
        try:
            code = child.wait(timeout=10 if stopping else None)
            break
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgrp(), signal.SIGKILL)
    return 0 if stopping else code


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--guard":
    sys.exit(guard(sys.argv[2:]))


# --- the command -------------------------------------------------------------------------------------------


def run_ui(run_dir: Path | None, runs_dir: Path, tracking_uri: str | None, host: str, port: int, open_browser: bool,
           console: Any) -> None:
    """`nas ui [RUN_DIR]`: serve the store, print (and open) the link to the search's trials; until stopped."""
    check_port(host, port)  # before anything slow: a busy port is the commonest mistake
    from nas.tracking import default_artifact_root, default_tracking_uri, ui_command

    meta: dict[str, Any] = {}
    if run_dir is not None:
        meta = read_run_meta(run_dir)
        if not meta.get("mlflow_parent_run_id"):
            raise NasError(f"{run_dir}: this search logged nothing to MLflow (tracking.enabled: false, or it never "
                           "started a trial); its results are in leaderboard.csv and best/")
        runs_dir = Path(run_dir).parent
    uri = tracking_uri or meta.get("tracking_uri") or default_tracking_uri(runs_dir)
    if uri.startswith(("http://", "https://")):
        raise NasError(f"--tracking-uri {uri}: that is already a server; open it in a browser. `nas ui` serves a "
                       "database store (sqlite:///..., postgresql://...)")
    if uri.startswith("sqlite:"):
        from nas.tracking import _sqlite_path

        db = _sqlite_path(uri)
        if db is not None and not db.exists():
            raise NasError(f"{db}: no MLflow store yet; run `nas search <spec>` first, or pass "
                           "--runs-dir/--tracking-uri")
    if run_dir is None:
        run_dir = latest_run_dir(runs_dir)
        meta = read_run_meta(run_dir) if run_dir is not None else {}
    target = None
    if run_dir is not None and meta.get("mlflow_parent_run_id"):
        from mlflow.tracking import MlflowClient

        target = mark_experiment(MlflowClient(tracking_uri=uri), Path(run_dir), meta["mlflow_parent_run_id"])
    argv = ui_command(uri, default_artifact_root(runs_dir), host=host, port=port)

    def ready(base: str) -> None:
        link = runs_url(base, target) if target is not None else base
        what = f"the trials of {target.run_dir}" if target is not None else "no search yet"
        console.print(f"MLflow UI over {uri}\n{what}, best first:\n  [bold]{link}[/]\n(Ctrl-C to stop)", soft_wrap=True)
        if open_browser:
            import webbrowser

            webbrowser.open(link)

    serve(argv, host, port, ready)
    console.print("MLflow UI stopped")
