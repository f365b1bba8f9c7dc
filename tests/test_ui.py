"""`nas ui` as a user meets it: a real MLflow server over a finished search, loaded in headless Chromium.

One server per module (starting one takes 10-30 s); the SIGTERM test runs last and stops it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.browser import render

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UI:
    def __init__(self, run_dir: Path, port: int):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-m", "nas", "ui", str(run_dir), "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "COLUMNS": "400"})
        self.out: list[str] = []
        deadline = time.monotonic() + 240
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.out.append(line)
            if "viewStateShareKey" in line:
                self.link = line.strip()
                return
        self.stop()
        raise AssertionError("nas ui printed no link:\n" + "".join(self.out))

    def tree(self) -> list[psutil.Process]:
        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


@pytest.fixture(scope="module")
def ui(finished_search: Path):
    server = UI(finished_search, _free_port())
    yield server
    pids = [p.pid for p in server.tree()]
    server.stop()
    for pid in pids:  # never leave a server behind, whatever a test did
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}")


def test_link_opens_the_trials_best_first_with_val_accuracy(ui: UI, finished_search: Path, chromium: str,
                                                            tmp_path: Path) -> None:
    assert ui.link.startswith(f"http://127.0.0.1:{ui.port}/#/experiments/")
    assert "workflowType=machine_learning" in ui.link
    page = render(chromium, ui.link, tmp_path / "runs.png")
    board = pd.read_csv(finished_search / "leaderboard.csv")  # best first
    dom = page.dom
    assert "val_accuracy" in dom and "Model training" in dom, page.screenshot
    positions = []
    for _, row in board.iterrows():
        name = f"trial-{int(row['trial']):03d}"
        assert name in dom, (name, page.screenshot)
        positions.append(dom.index(name))
        assert f"{row['val_accuracy']:.10f}"[:6] in dom, (row["val_accuracy"], page.screenshot)
    assert positions == sorted(positions), f"trials not best first in {page.screenshot}"
    assert "depth" in dom  # a main param as a column
    # MLflow knows the experiment as a model-training one, with a description
    exp = _client(finished_search).get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "nas search" in exp.tags["mlflow.note.content"]


def test_compare_page_of_two_trials_shows_params_and_metrics(ui: UI, finished_search: Path, chromium: str,
                                                             tmp_path: Path) -> None:
    from nas.ui import compare_url

    client = _client(finished_search)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`nas.kind` = 'trial'", order_by=["metrics.val_accuracy DESC"])
    a, b = runs[0], runs[-1]
    url = compare_url(f"http://127.0.0.1:{ui.port}", exp.experiment_id, [a.info.run_id, b.info.run_id])
    page = render(chromium, url, tmp_path / "compare.png")
    dom = page.dom
    for run in (a, b):
        assert run.info.run_name in dom, page.screenshot
        assert run.data.params["train.learning_rate"][:6] in dom, page.screenshot
        assert f">{round(run.data.metrics['val_accuracy'], 3)}<" in dom, page.screenshot  # the UI shows 3 decimals
    assert "val_accuracy" in dom and "train.learning_rate" in dom


def test_server_listens_on_loopback_only(ui: UI) -> None:
    """The address the server's sockets are bound to, not the argv nas built."""
    listening = [c for p in ui.tree() for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ui.port]
    assert listening, "nothing in the nas ui process tree listens on the port"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_busy_port_is_a_clear_error(finished_search: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "nas", "ui", str(finished_search), "--port", str(port)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and f"--port {port + 1}" in r.stderr and "Traceback" not in r.stderr


def test_a_server_that_fails_to_start_is_a_clear_error() -> None:
    port = _free_port()
    r = subprocess.run([sys.executable, "-m", "nas", "ui", "--tracking-uri", "bogus://nowhere", "--port", str(port)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "bogus://nowhere" in r.stderr and "Fix:" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "nas", "ui", str(tmp_path / "nope")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "no such run directory" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_stops_the_server_it_started(ui: UI) -> None:
    """Last: a service manager's SIGTERM to `nas ui` ends mlflow server and its workers; the port is free."""
    tree = ui.tree()
    assert any("mlflow" in " ".join(p.cmdline()) for p in tree[1:])
    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(60) == 0
    gone, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ui.port))
    assert re.search(r"stopped", ui.proc.stdout.read() if ui.proc.stdout else "")


def test_a_new_experiment_is_a_model_training_one(tmp_path: Path) -> None:
    """Searches create their experiment with the tag MLflow 3's UI reads to open its runs view."""
    from nas.tracking import MlflowTracker, default_tracking_uri

    tracker = MlflowTracker(default_tracking_uri(tmp_path), "fresh")
    exp = _client(tmp_path / "fresh").get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_latest_run_dir_is_the_last_started_search_with_an_mlflow_run(tmp_path: Path) -> None:
    import json

    from nas.ui import latest_run_dir

    assert latest_run_dir(tmp_path) is None
    for i, (name, meta) in enumerate([("old", {"mlflow_parent_run_id": "a"}), ("new", {"mlflow_parent_run_id": "b"}),
                                      ("untracked", {})]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(meta))
        os.utime(tmp_path / name / "run.json", (1000 + i, 1000 + i))
    assert latest_run_dir(tmp_path) == tmp_path / "new"


def test_dashboard_serves_the_study_and_stops(finished_search: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    import json
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nas", "dashboard", str(finished_search), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        out = [proc.stdout.readline() for _ in range(2)]
        assert f"http://127.0.0.1:{port}" in "".join(out), out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
            studies = json.loads(resp.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not psutil.wait_procs(tree, timeout=20)[1]


def test_dashboard_without_the_extra_or_a_study_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    import io

    from nas.dashboard import run_dashboard
    from nas.errors import NasError
    from rich.console import Console

    run = tmp_path / "optuna"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "study.db").write_bytes(b"")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(NasError, match=r"pip install 'optuna-dashboard==0.21.0'"):
        run_dashboard(run, "127.0.0.1", _free_port(), Console(file=io.StringIO()))
    kt = tmp_path / "kt"
    (kt / "keras_tuner").mkdir(parents=True)
    (kt / "run.json").write_text("{}")
    with pytest.raises(NasError, match="KerasTuner search has no Optuna study"):
        run_dashboard(kt, "127.0.0.1", _free_port(), Console(file=io.StringIO()))
