"""The command line as a user meets it: exit codes, one clear message, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def nas(*args: object, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_validate_prints_the_space_and_survey() -> None:
    r = nas("validate", REPO / "search_spaces" / "digits.yaml")
    assert r.returncode == 0, r.stderr
    for fragment in ("search space of 'digits'", "block.1..3.convs_per_block", "train.learning_rate",
                     "float in [0.001, 0.01], log scale", "parameters: smallest", "impossible:", "is valid"):
        assert fragment in r.stdout


def test_validate_reports_impossible_shapes(tmp_path: Path) -> None:
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: deep\ndata: {source: digits}\nspace:\n  depth: [3, 5]\n  strides: [1, 2]\n  pooling: max\n")
    r = nas("validate", spec)
    assert r.returncode == 0
    assert "input cannot take" in r.stdout and "never trained" in r.stdout


def test_validate_fails_when_every_shape_is_impossible(tmp_path: Path) -> None:
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: deep\ndata: {source: digits}\nspace:\n  depth: 6\n  pooling: max\n")
    r = nas("validate", spec)
    assert r.returncode == 2
    assert "every sampled architecture is impossible" in r.stderr and "Traceback" not in r.stderr


def test_bad_spec_exits_2_with_line_and_key(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ndata: {source: digits}\nspace:\n  depth: 2\n  activaton: relu\n")
    for cmd in ("validate", "search"):
        r = nas(cmd, spec, "--runs-dir", tmp_path / "runs") if cmd == "search" else nas(cmd, spec)
        assert r.returncode == 2
        assert f"{spec}:5: space.activaton: unknown key. Did you mean 'activation'?" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "t").exists()  # nothing created for a spec that does not load


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\n")
    r = nas("--debug", "validate", spec)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_bad_data_source_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ndata: {source: 'idx:missing'}\nspace: {depth: 1}\n")
    r = nas("validate", spec)
    assert r.returncode == 2 and "data.source" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ndata: {source: digits}\nspace: {depth: 1}\n")
    started = time.monotonic()
    r = nas("search", spec, "--runs-dir", tmp_path / "runs", "--tracking-uri", "http://127.0.0.1:9")
    assert r.returncode == 2, r.stderr
    assert "http://127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs" / "t" / "leaderboard.csv").exists()


def test_bad_timeout_flag(tmp_path: Path) -> None:
    r = nas("search", REPO / "search_spaces" / "digits.yaml", "--runs-dir", tmp_path, "--timeout", "soon")
    assert r.returncode == 2 and "--timeout: expected a duration" in r.stderr


def test_schema_is_json_with_every_section(tmp_path: Path) -> None:
    r = nas("schema")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert {"data", "space", "train", "search"} <= set(doc["properties"])
    out = tmp_path / "s.json"
    assert nas("schema", "-o", out).returncode == 0 and json.loads(out.read_text())["title"] == "nas search spec"


def test_ui_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    r = nas("ui", "--runs-dir", tmp_path)
    assert r.returncode == 2 and "run `nas search <spec>` first" in r.stderr


def test_ctrl_c_in_any_command_exits_130(monkeypatch, capsys) -> None:
    """Typer reports a KeyboardInterrupt inside a command as a return value; it must not become exit 0."""
    from nas import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("nas.validate.report", interrupted)
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", str(REPO / "search_spaces" / "digits.yaml")])
    assert info.value.code == 130
    assert "interrupted" in capsys.readouterr().err
