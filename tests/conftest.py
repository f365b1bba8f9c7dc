"""Shared fixtures. Real training uses scikit-learn's digits (bundled) with tiny budgets."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

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
