"""`nas report` and `nas status` over a finished search, a search with no finished trial, a KerasTuner run and a
multi-objective one; the page is checked as Chromium renders it, offline."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from nas.report.html import SECTIONS

from tests.browser import render

NAS = [sys.executable, "-m", "nas"]


def nas(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NAS, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def sections(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)"', html)


def _offline_checks(page_html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_html), "the page fetches something"
    assert "<script" not in page_html.lower() or "src=" not in page_html.lower()


@pytest.mark.slow
def test_search_writes_the_report_and_logs_it_to_mlflow(finished_search: Path) -> None:
    page = finished_search / "report" / "index.html"
    assert page.exists(), "a completed search writes its report"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(finished_search.parent / 'mlflow.db').resolve()}")
    parent = __import__("json").loads((finished_search / "run.json").read_text())["mlflow_parent_run_id"]
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent, "report")}


@pytest.mark.slow
def test_report_renders_offline_with_every_section(finished_search: Path, chromium: str, tmp_path: Path) -> None:
    r = nas("report", finished_search)
    assert r.returncode == 0, r.stderr
    page_file = finished_search / "report" / "index.html"
    text = page_file.read_text()
    _offline_checks(text)
    page = render(chromium, page_file.as_uri(), tmp_path / "report.png", budget_ms=3000, offline=True,
                  size="1200,4000")
    assert page.console == [], page.console
    assert sections(page.dom) == list(SECTIONS)
    board = pd.read_csv(finished_search / "leaderboard.csv")
    best = __import__("json").loads((finished_search / "best" / "metrics.json").read_text())
    glance = page.dom.split('<section id="history"')[0]
    assert f"test_accuracy {best['test_accuracy']:.4f}" in glance and f"{len(board)} finished" in glance
    assert page.dom.count("<svg") >= 4  # history, curves, importances, parallel coordinates
    curves = page.dom.split('<section id="curves"')[1].split("</section>")[0]
    assert "<svg" in curves and "per epoch" in curves
    arch = page.dom.split('<section id="architectures"')[1].split("</section>")[0]
    assert f"trial {best['trial']}:" in arch and "block 1" in arch and "params" in arch and "head" in arch


def _fake_run(tmp_path: Path, spec_extra: str, rows: list[dict], name: str = "fake") -> Path:
    """A run directory as a search leaves it, without training: spec.yaml, leaderboard.csv (and best/arch.json)."""
    from tests.conftest import TINY_SPEC

    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(TINY_SPEC.format(name=name, epochs=2, trials=max(len(rows), 8), seed=0) + spec_extra)
    pd.DataFrame(rows).to_csv(run / "leaderboard.csv", index=False)
    return run


def test_no_finished_trial_gives_a_report_that_says_so(tmp_path: Path, chromium: str) -> None:
    rows = [{"trial": 0, "state": "failed", "reason": "ResourceExhaustedError: OOM", "param.depth": 2},
            {"trial": 1, "state": "failed", "reason": "ResourceExhaustedError: OOM", "param.depth": 1},
            {"trial": 2, "state": "pruned", "reason": "block 2: 1x1 input cannot take stride 2", "param.depth": 2}]
    run = _fake_run(tmp_path, "", rows)
    r = nas("report", run)
    assert r.returncode == 0, r.stderr
    page = render(chromium, (run / "report" / "index.html").as_uri(), tmp_path / "empty.png", budget_ms=2000,
                  offline=True)
    assert page.console == []
    assert sections(page.dom) == list(SECTIONS)
    assert "No trial finished" in page.dom and "this section failed" not in page.dom
    failures = page.dom.split('<section id="failures"')[1]
    assert "ResourceExhaustedError: OOM" in failures and "<td class=\"n\">2</td>" in failures


def _finished_rows(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        lr = 10 ** rng.uniform(-3, -2)
        rows.append({"trial": i, "state": "finished", "val_accuracy": 0.5 + 40 * lr + rng.uniform(0, 0.02),
                     "params": rng.choice([400, 800, 1500]), "epochs_run": 2, "wall_time_s": 5.0, "reason": "",
                     "param.depth": rng.choice([1, 2]), "param.train.learning_rate": lr,
                     "param.block.1.filters": rng.choice([8, 16])})
    return rows


def test_keras_tuner_run_gets_importances_from_the_leaderboard(tmp_path: Path) -> None:
    from nas.report import write_report

    run = _fake_run(tmp_path, "", [], name="kt")
    spec = (run / "spec.yaml").read_text().replace("search:\n", "search:\n  backend: keras-tuner\n")
    spec = "".join(line for line in spec.splitlines(keepends=True)
                   if not line.strip().startswith(("sampler:", "pruner:", "startup_trials:")))
    (run / "spec.yaml").write_text(spec)
    pd.DataFrame(_finished_rows(8)).sort_values("val_accuracy", ascending=False).to_csv(run / "leaderboard.csv",
                                                                                        index=False)
    html = write_report(run, log_to_mlflow=False).read_text()
    assert sections(html) == list(SECTIONS) and "this section failed" not in html
    assert "backend keras-tuner" in html and "could not be read" not in html
    importance = html.split('<section id="importance"')[1].split("</section>")[0]
    assert "<svg" in importance and "train.learning_rate" in importance
    assert "no Pareto front" in html


def test_multi_objective_run_draws_its_pareto_front(tmp_path: Path) -> None:
    from nas.report import write_report

    run = _fake_run(tmp_path, "", [], name="mo")
    spec = (run / "spec.yaml").read_text().replace(
        "search:\n", "search:\n  objectives: [{metric: val_accuracy}, {metric: params, direction: minimize}]\n")
    (run / "spec.yaml").write_text(spec)
    rows = _finished_rows(8)
    pd.DataFrame(rows).to_csv(run / "leaderboard.csv", index=False)
    html = write_report(run, log_to_mlflow=False).read_text()
    assert "could not be read" not in html
    pareto = html.split('<section id="pareto"')[1].split("</section>")[0]
    assert "<svg" in pareto
    # the front is exactly the non-dominated trials
    df = pd.DataFrame(rows)
    front = {int(r.trial) for r in df.itertuples()
             if not any((o.val_accuracy >= r.val_accuracy and o.params <= r.params)
                        and (o.val_accuracy > r.val_accuracy or o.params < r.params) for o in df.itertuples())}
    shown = {int(t) for t in re.findall(r"<tr><td>(\d+)</td>", pareto)}
    assert shown == front


@pytest.mark.slow
def test_status_reads_a_running_search_without_touching_it(finished_search: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in finished_search.rglob("*")}
    fd = os.open(finished_search / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running search holds it
        r = nas("status", finished_search)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert f"running (pid {os.getpid()}" in r.stdout
    board = pd.read_csv(finished_search / "leaderboard.csv")
    assert f"{len(board)} of {len(board)} trials done" in r.stdout
    for t in board["trial"]:
        assert re.search(rf"^\s*{t}\s+finished", r.stdout, re.M)
    after = {p: p.stat().st_mtime_ns for p in finished_search.rglob("*")}
    assert after == before, "nas status changed the run directory"
    r = nas("status", finished_search)
    assert "not running" in r.stdout


@pytest.mark.parametrize("cmd", ["report", "status"])
def test_unknown_run_dir_is_one_clear_message(cmd: str, tmp_path: Path) -> None:
    r = nas(cmd, tmp_path / "nope")
    assert r.returncode == 2 and "no such run directory" in r.stderr and "Traceback" not in r.stderr
    r = nas(cmd, tmp_path)
    assert r.returncode == 2 and "not a search's run directory" in r.stderr


def test_report_false_is_in_the_spec_and_leaves_the_identity_alone(tmp_path: Path) -> None:
    from nas.spec.loader import load_spec

    a = _fake_run(tmp_path, "", [], name="a") / "spec.yaml"
    b = tmp_path / "b.yaml"
    b.write_text(a.read_text() + "report: false\n")
    assert load_spec(b).spec.report is False and load_spec(a).spec.report is True
    assert load_spec(a).hash == load_spec(b).hash  # turning the report off never forces a new run dir



def test_a_failing_report_only_warns_at_the_end_of_a_search(tmp_path: Path, monkeypatch) -> None:
    import io

    import nas.report as report
    from rich.console import Console

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    out = io.StringIO()
    assert report.report_after_search(tmp_path, Console(file=out, width=200)) is None
    assert "warning" in out.getvalue() and "disk full" in out.getvalue() and "nas report" in out.getvalue()


def test_a_paused_leader_is_the_best_so_far_in_status_and_the_report(tmp_path: Path) -> None:
    """The 1-hour budget search of bench/RESULTS.md: its best configurations waited, paused, at the epoch-9 rung
    and one trial finished, far behind. `nas status` and the report rank the paused leader first (the winner rule,
    nas.trial.competing_value), not the finished straggler, and do not say that no trial finished; with
    search.constraints a paused trial cannot win, so there they show the finished one."""
    import io

    from rich.console import Console

    from nas.leaderboard import frame
    from nas.report import write_report
    from nas.spec import parse_spec
    from nas.status import show

    def row(trial: int, state: str, val: float | None, **extra: object) -> dict:
        return {"trial": trial, "state": state, "reason": "", "params": 83_450.0, "epochs_run": 9.0,
                "val_samples": 6000.0, "param.depth": 2, **({"val_accuracy": val} if val is not None else {}), **extra}

    trials = [row(21, "finished", 0.8857), row(15, "paused", 0.9158), row(11, "paused", 0.9065),
              row(3, "pruned", 0.70)]
    objectives = parse_spec("name: x\ndata: {source: digits}\nspace: {depth: 1}\n").search.objectives
    run = _fake_run(tmp_path, "", [])
    frame(trials, objectives).to_csv(run / "leaderboard.csv", index=False)

    out = io.StringIO()
    show(run, Console(file=out, width=200))
    assert "best so far: trial 15, val_accuracy 0.9158 (paused at a rung)" in out.getvalue(), out.getvalue()
    html = write_report(run, log_to_mlflow=False).read_text()
    assert "No trial finished" not in html and "no trial finished" not in html
    summary = html.split('<section id="glance"')[1].split("</section>")[0]
    assert [int(t) for t in re.findall(r"<tr><td>(\d+)</td>", summary)] == [15, 11, 21]  # pruned 3 is no contender
    assert "<td>paused</td>" in summary
    assert "trial 15: val_accuracy 0.9158" in html.split('<section id="architectures"')[1]
    history = html.split('<section id="history"')[1].split("</section>")[0]
    assert "<svg" in history and "paused at a rung" in history  # the paused trials, drawn hollow

    # with search.constraints a paused trial (never measured against them) is no contender: the finished one leads
    constrained = [{**t, "feasible": t["state"] == "finished"} for t in trials]
    frame(constrained, objectives).to_csv(run / "leaderboard.csv", index=False)
    out = io.StringIO()
    show(run, Console(file=out, width=200))
    assert "best so far: trial 21, val_accuracy 0.8857 (test accuracy" in out.getvalue(), out.getvalue()
