"""`nas validate`'s survey: impossible shapes counted, parameter extremes found."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from nas.arch import plan
from nas.cli import main
from nas.errors import InvalidArchitecture, TrackingError
from nas.space import DataInfo, SearchSpace
from nas.spec import load_spec, parse_spec
from nas.validate import check_run_dir, check_store, survey

DATA = DataInfo((8, 8, 1), 10, 16.0)
SPEC = """name: v
data: {source: digits}
space:
  depth: {low: 1, high: 4}
  filters: [8, 16, 24]
  strides: [1, 2]
  pooling: [max, none]
  head: {type: [gap, flatten], depth: [0, 1], width: [8, 32]}
  per_block: false
  max_params: 20000
"""


def test_extremes_match_exhaustive_enumeration() -> None:
    space = SearchSpace(parse_spec(SPEC))
    names = list(space.dims)
    values = [space.dims[n].values if hasattr(space.dims[n], "values") else range(space.dims[n].low, space.dims[n].high + 1)
              for n in names]
    sizes = []
    for combo in itertools.product(*values):
        try:
            p = plan(space.decode(dict(zip(names, combo)), DATA).arch).params
        except InvalidArchitecture:
            continue
        if p <= 20000:
            sizes.append(p)
    s = survey(space, DATA, samples=300)
    assert (s.min_params, s.max_params) == (min(sizes), max(sizes))
    assert s.impossible > 0 and s.too_large > 0
    assert any("cannot take" in reason for reason, _ in s.reasons)


# --- where `nas search` would write: checked by `nas validate`, nothing created -------------------------


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def spec_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "v.yaml"
    path.write_text("name: v\ndata: {source: digits}\nspace: {depth: 1, filters: 4, head: {depth: 0}}\n" + extra)
    return path


def test_validate_checks_the_store_and_run_dir_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    main(["validate", str(spec)])  # returns: exit 0
    out = capsys.readouterr().out
    assert f"MLflow store: sqlite:///{tmp_path.resolve()}/runs/mlflow.db (will be created)" in out
    assert "run directory: runs/v (new)" in out
    assert snapshot(tmp_path) == before  # no runs/, no mlflow.db, no probe files left


def test_validate_refuses_a_run_dir_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_file(tmp_path, "tracking: {enabled: false}\n")
    (tmp_path / "runs").write_text("a file where the runs folder would go")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["validate", str(spec)])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "runs/v: cannot create the run directory: runs is a file, not a folder" in err and "--runs-dir" in err


@pytest.mark.parametrize(("uri", "problem"), [
    ("sqlite:///{tmp}/file/mlflow.db", "is a file, not a folder"),
    ("sqlite:///{tmp}/junk.db", "is not a SQLite database"),
    ("sqlite:///{tmp}", "is a folder, not a database file"),
    ("http://127.0.0.1:9", "connection refused"),
    # root writes through any mode bits, so only a non-root run can see a read-only folder refused
    *([] if os.geteuid() == 0 else [("sqlite:///{tmp}/readonly/sub/mlflow.db", "readonly is not writable")]),
])
def test_an_unusable_store_fails_validation(tmp_path: Path, uri: str, problem: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    (tmp_path / "readonly").mkdir(mode=0o500)
    spec = spec_file(tmp_path, f"tracking: {{uri: '{uri.format(tmp=tmp_path)}'}}\n")
    before = snapshot(tmp_path)
    with pytest.raises(TrackingError, match=problem):
        check_store(load_spec(spec), tmp_path / "runs")
    assert snapshot(tmp_path) == before


def test_store_and_run_dir_lines(tmp_path: Path) -> None:
    assert check_store(load_spec(spec_file(tmp_path, "tracking: {enabled: false}\n"))) == \
        "MLflow: off (tracking.enabled: false)"
    loaded = load_spec(spec_file(tmp_path, "tracking: {uri: sqlite:///store/m.db}\n"))
    assert check_store(loaded, tmp_path / "runs").endswith(f"{tmp_path.resolve()}/store/m.db (will be created)")
    run = tmp_path / "runs" / "v"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"spec_hash": "another"}')
    assert "made by a different spec" in check_run_dir(loaded, tmp_path / "runs")
    (run / "run.json").write_text(json.dumps({"spec_hash": loaded.hash}))
    assert "exists: `nas search` resumes it" in check_run_dir(loaded, tmp_path / "runs")
