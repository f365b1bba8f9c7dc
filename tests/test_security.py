"""Security basics: safe YAML only, no eval/exec/pickle of user data, paths relative to the spec, outputs
under the run directory, servers on loopback (the last is in test_cli / test_tracking)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.errors import SpecError
from nas.spec import parse_spec

PACKAGE = Path(__file__).resolve().parents[1] / "nas"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "?"
            out.append((name, node))
    return out


def _kw(call: ast.Call, name: str) -> object:
    kw = next((k for k in call.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else (None if kw is None else "?")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_code_execution_from_data(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve") for n in names), \
                f"{path}:{node.lineno}: pickle-like module imported"
    for name, call in _calls(tree):
        where = f"{path}:{call.lineno}"
        assert name not in ("eval", "exec", "compile", "__import__"), f"{where}: {name}()"
        if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
            assert isinstance(loader, ast.Name) and loader.id == "_Loader", f"{where}: yaml loaded without the safe _Loader"
        if name == "np.load":
            assert _kw(call, "allow_pickle") is False, f"{where}: np.load without allow_pickle=False"
        assert _kw(call, "shell") in (None, False), f"{where}: shell=True"
        assert _kw(call, "safe_mode") in (None, True), f"{where}: safe_mode=False"


def test_the_yaml_loader_is_a_safe_loader() -> None:
    import yaml

    from nas.spec.loader import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']",
                                 "!!python/name:os.system", "!!python/object/new:subprocess.Popen [['touch', '{marker}']]"])
def test_python_tags_are_refused_and_never_run(tag: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError, match=r"t\.yaml:1: YAML syntax error"):
        parse_spec("name: " + tag.format(marker=marker) + "\ndata: {source: digits}\nspace: {depth: 2}\n", "t.yaml")
    assert not marker.exists()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("use", ["", "space: {depth: 2, kernel_size: *i}\n", "export: {formats: *i}\n",
                                 "space: {depth: *i}\n", "name: *i\n", "search: {timeout: *i}\n"])
def test_anchor_bombs_are_cut_short(use: str) -> None:
    """Billion-laughs: 9 ** 9 leaves by aliases. Loading shares them; nothing may walk or print them in full."""
    import time

    base = {"name": "name: t\n", "data": "data: {source: digits}\n", "space": "space: {depth: 2}\n"}
    for key in ("name", "space"):
        if use.startswith(key):
            base[key] = ""
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        parse_spec(BOMB + "".join(base.values()) + use, "t.yaml")
    assert time.perf_counter() - started < 10
    assert len(str(info.value)) < 20_000


@pytest.mark.slow
def test_paths_resolve_against_the_spec_and_outputs_stay_in_the_run_dir(tmp_path: Path) -> None:
    """From an unrelated working directory: data and the sqlite store are found next to the spec, and nothing
    is written outside the run directory and the store the spec names."""
    from sklearn.datasets import load_digits

    project, cwd, runs = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "runs"
    (project / "data").mkdir(parents=True)
    cwd.mkdir()
    d = load_digits()
    np.savez(project / "data" / "digits.npz", x_train=(d.images * 16).astype(np.uint8)[:600], y_train=d.target[:600])
    (project / "spec.yaml").write_text(
        "name: rel\ndata: {source: npz:data/digits.npz}\nspace: {depth: 1, filters: 8}\n"
        "train: {epochs: 1, batch_size: 64}\nsearch: {trials: 1, pruner: none}\n"
        "tracking: {uri: sqlite:///store/mlflow.db}\n")
    before = {p for p in tmp_path.rglob("*")}
    r = subprocess.run([sys.executable, "-m", "nas", "search", str(project / "spec.yaml"), "--runs-dir", str(runs)],
                       cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr + r.stdout
    assert (project / "store" / "mlflow.db").is_file()  # relative to the spec, not to the working directory
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if not (p.is_relative_to(runs) or p.is_relative_to(project / "store"))]
    assert not outside, f"written outside the run dir and the store: {sorted(map(str, outside))}"
    assert not any(cwd.iterdir())
    assert (runs / "rel" / "best" / "model.keras").is_file()
