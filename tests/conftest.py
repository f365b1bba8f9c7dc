"""Shared fixtures. Real training uses scikit-learn's digits (bundled) with tiny budgets."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


TINY_SPEC = """\
name: {name}
data:
  source: digits
  validation_fraction: 0.2
augment:
  translation: 0.05
space:
  depth: {{low: 1, high: 2}}
  filters: [8, 16]
  pooling: [max, none]
  head: {{type: gap, depth: 0}}
train:
  epochs: {epochs}
  learning_rate: {{low: 3e-3, high: 1e-2, log: true}}
  batch_size: 64
search:
  sampler: tpe
  pruner: none
  trials: {trials}
  seed: {seed}
  startup_trials: 2
"""


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """Write a tiny digits spec into tmp_path and return its path (format args override defaults)."""

    def make(name: str = "tiny", epochs: int = 2, trials: int = 3, seed: int = 0, extra: str = "") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY_SPEC.format(name=name, epochs=epochs, trials=trials, seed=seed) + textwrap.dedent(extra))
        return path

    return make


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory):
    """One tiny digits search through the real CLI, shared by the ui, report and status tests (read it, never
    write to it): returns the run directory runs/tiny."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("finished_search")
    spec = root / "tiny.yaml"
    spec.write_text(TINY_SPEC.format(name="tiny", epochs=2, trials=4, seed=0))
    r = subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(root / "runs")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    return root / "runs" / "tiny"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by scripts/ensure_chromium.sh when missing (as root, with apt)."""
    import subprocess

    r = subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"chromium is needed for the browser tests and could not be installed:\n{r.stderr[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every model nas.train builds for a trial, in order (their optimizers count the steps trained)."""
    import nas.train

    real, models = nas.train.build_model, []

    def build(arch: Any) -> Any:
        models.append(real(arch))
        return models[-1]

    monkeypatch.setattr(nas.train, "build_model", build)
    return models


@pytest.fixture
def deterministic_ops() -> Iterator[None]:
    """Op determinism for one test; restored after so other tests run as they would alone."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was:
        tf_config.disable_op_determinism()
