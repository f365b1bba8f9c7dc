"""The spec loader: shipped specs load, and every kind of mistake gets a message with line, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.errors import SpecError
from nas.spec import load_spec, parse_spec
from nas.spec.dims import Choice, FloatRange, IntRange

REPO = Path(__file__).resolve().parents[1]
BASE = "name: t\ndata: {source: digits}\n"


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path: Path) -> None:
    loaded = load_spec(path)
    assert loaded.spec.name == path.stem
    assert len(loaded.hash) == 16


def test_forms_parse_into_dimensions() -> None:
    spec = parse_spec(BASE + """space:
  depth: {low: 1, high: 4}
  kernel_size: [3, 5]
  dropout: {low: 0.0, high: 0.5, step: 0.1}
train:
  learning_rate: {low: 1e-4, high: 1e-2, log: true}
""")
    assert spec.space.depth == IntRange(1, 4)
    assert spec.space.kernel_size == Choice((3, 5))
    assert spec.space.dropout == FloatRange(0.0, 0.5, 0.1)
    assert spec.train.learning_rate == FloatRange(1e-4, 1e-2, None, True)  # 1e-4 is a float, not YAML 1.1's string


def test_timeout_durations() -> None:
    spec = parse_spec(BASE + "space: {depth: 1}\nsearch: {timeout: 1h30m}\n")
    assert spec.search.timeout == 5400.0


BAD = [
    # (spec text after BASE, expected fragment, expected line)
    ("space:\n  depth: 2\n  activaton: relu\n", r"t\.yaml:5: space\.activaton: unknown key\. Did you mean 'activation'\?", 5),
    ("space:\n  depth: 0\n", r"space\.depth: expected a value >= 1 and <= 32, got 0", 4),
    ("space:\n  depth: {low: 4, high: 2}\n", r"`low <= high` must hold, but got low=4 and high=2; swap them", 4),
    ("space:\n  depth: 2\n  kernel_size: []\n", r"empty choice list has nothing to pick", 5),
    ("space:\n  depth: 2\ntrain:\n  weight_decay: {low: 0, high: 0.1, log: true}\n", r"log-scale range needs low > 0", 6),
    ("space:\n  depth: 2\n  dropout: 1.0\n", r"space\.dropout: expected a value >= 0 and < 1, got 1\.0", 5),
    ("space:\n  depth: 2\n  activation: [relu, gelo]\n", r"got 'gelo' \(choice 2\)\. Did you mean 'gelu'\?", 5),
    ("space:\n  depth: 2\n  pooling: maxx\n", r"expected one of max, avg, none, got 'maxx'\. Did you mean 'max'\?", 5),
    ("space:\n  depth: 2\ntrain:\n  optimizer: adamm\n", r"Did you mean 'adam'\?", 6),
    ("space:\n  depth: 2\nsearch:\n  sampler: tp\n", r"search\.sampler: expected one of .*got 'tp'\. Did you mean 'tpe'\?", 6),
    ("space:\n  depth: 2\nsearch:\n  pruner: medain\n", r"Did you mean 'median'\?", 6),
    ("space:\n  depth: 2\n  filters: -8\n", r"space\.filters: expected a value >= 1, got -8", 5),
    ("space:\n  depth: 2\n  filters: {base: 8, grow: 2}\n", r"space\.filters\.grow: unknown key\. Did you mean 'growth'\?", 5),
    ("space:\n  depth: 2\n  kernel_size: {low: 1, hgh: 3}\n", r"unknown key 'hgh' in a range.*Did you mean 'high'\?", 5),
    ("space:\n  depth: 2\n  batch_norm: yes please\n", r"expected true or false, got 'yes please'", 5),
    ("space:\n  depth: 2\n  pooling: {low: 1, high: 2}\n", r"a range needs numbers; give a value \(one of max, avg, none\)", 5),
    ("space:\n  depth: 2\n  kernel_size: [3, 3]\n", r"repeats a value", 5),
    ("space:\n  depth: 2\nsearch:\n  timeout: soon\n", r"expected a duration such as 90s, 30m", 6),
    ("space:\n  depth: 2\nsearch:\n  objectives: [val_accuracy, params]\n  pruner: hyperband\n",
     r"needs a single objective.*set `pruner: pareto`.*or `pruner: none`", 5),
    ("space:\n  depth: 2\n  depth: 3\n", r"space\.depth: the key appears twice", 5),
    ("spaec:\n  depth: 2\n", r"spaec: unknown key\. Did you mean 'space'\?", 3),
    ("train: {epochs: 3}\n", r"space: required key is missing", None),
    ("space:\n  depth: 2\n   kernel_size: 3\n", r"t\.yaml:5: YAML syntax error", 5),
    # the keras-tuner backend: which search keys go with which backend and algorithm
    ("space:\n  depth: 2\nsearch:\n  backend: keras_tuner\n", r"search\.backend: expected one of 'optuna' or 'keras-tuner', got 'keras_tuner'\. Did you mean 'keras-tuner'\?", 6),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  sampler: tpe\n  pruner: none\n",
     r"t\.yaml:5: search: search\.sampler, search\.pruner are for backend optuna only, but backend is 'keras-tuner'; remove search\.sampler, search\.pruner and choose `algorithm: hyperband \| bayesian \| random`", 5),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  warmup_epochs: 2\n", r"search\.warmup_epochs is for backend optuna only", 5),
    ("space:\n  depth: 2\nsearch:\n  algorithm: random\n", r"search\.algorithm is for backend keras-tuner only, but backend is 'optuna'; set `backend: keras-tuner`, or remove search\.algorithm", 5),
    ("space:\n  depth: 2\nsearch:\n  hyperband: {max_epochs: 9}\n", r"search\.hyperband is for backend keras-tuner only", 5),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  algorithm: bayesian\n  hyperband: {factor: 3}\n",
     r"search\.hyperband is for algorithm hyperband only, but algorithm is 'bayesian'; remove search\.hyperband, or set `algorithm: hyperband`", 5),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  algorithm: hyperbnd\n", r"search\.algorithm: expected one of .*got 'hyperbnd'\. Did you mean 'hyperband'\?", 7),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  hyperband: {max_epoch: 9}\n", r"search\.hyperband\.max_epoch: unknown key\. Did you mean 'max_epochs'\?", 7),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  startup_trials: 3\n", r"search\.startup_trials .* is for algorithm bayesian only, but algorithm is 'hyperband'", 5),
    ("space:\n  depth: 2\nsearch:\n  backend: keras-tuner\n  objectives: [val_accuracy, params]\n",
     r"backend keras-tuner optimizes one objective, but 2 are set; keep one, or use `backend: optuna`", 5),
]


@pytest.mark.parametrize("text,fragment,line", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_spec_messages(text: str, fragment: str, line: int | None) -> None:
    with pytest.raises(SpecError, match=fragment) as info:
        parse_spec(BASE + text, "t.yaml")
    if line is not None:
        assert f"t.yaml:{line}:" in str(info.value)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE + "space:\n  depth: 0\n  pooling: maxx\n", "t.yaml")
    assert len(info.value.problems) == 2
    assert str(info.value).startswith("t.yaml: 2 problems in the spec")


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match=r"expected a YAML mapping with sections"):
        parse_spec("- just\n- a list\n", "t.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no such spec file; check the path"):
        load_spec(tmp_path / "nope.yaml")


def test_keras_tuner_search_section() -> None:
    spec = parse_spec(BASE + "space: {depth: 2}\nsearch:\n  backend: keras-tuner\n  hyperband: {max_epochs: 27}\n")
    assert (spec.search.algorithm, spec.search.hyperband.max_epochs, spec.search.hyperband.factor) == ("hyperband", 27, 3)
    spec = parse_spec(BASE + "space: {depth: 2}\nsearch: {backend: keras-tuner, algorithm: bayesian, startup_trials: 3}\n")
    assert spec.search.algorithm == "bayesian" and spec.search.hyperband is None


def test_keras_tuner_keys_leave_optuna_spec_hashes_alone() -> None:
    """Specs written before the keras-tuner keys existed keep their hash (their run directories still resume)."""
    from nas.spec.loader import flat_keys

    keys = flat_keys(parse_spec(BASE + "space: {depth: 2}\n"))
    assert not any(k.startswith(("search.algorithm", "search.hyperband")) for k in keys)
    kt = flat_keys(parse_spec(BASE + "space: {depth: 2}\nsearch: {backend: keras-tuner}\n"))
    explicit = flat_keys(parse_spec(BASE + "space: {depth: 2}\nsearch: {backend: keras-tuner, algorithm: hyperband}\n"))
    assert kt["search.algorithm"] == "hyperband" and kt == explicit


def test_hash_ignores_budget_but_not_space() -> None:
    a = parse_spec(BASE + "space: {depth: 2}\nsearch: {trials: 5}\n")
    b = parse_spec(BASE + "space: {depth: 2}\nsearch: {trials: 50, timeout: 1h}\n")
    c = parse_spec(BASE + "space: {depth: 3}\nsearch: {trials: 5}\n")
    from nas.spec.loader import LoadedSpec

    h = [LoadedSpec(s, Path("x.yaml"), "").hash for s in (a, b, c)]
    assert h[0] == h[1] != h[2]


def test_json_schema_describes_every_section() -> None:
    from nas.spec.model import Spec

    schema = Spec.model_json_schema()
    assert {"data", "augment", "space", "train", "search", "tracking"} <= set(schema["properties"])
    assert schema["required"] == ["name", "data", "space"]


def test_a_search_made_under_the_old_rung_data_default_keeps_its_hash() -> None:
    """rung_data's default was auto until full measured better: a spec that says auto (or nothing) still finds
    its run directory; subsets, which trains differently, is another search."""
    from nas.spec.loader import LoadedSpec

    h = {v: LoadedSpec(parse_spec(BASE + "space: {depth: 2}\n" + (f"search: {{rung_data: {v}}}\n" if v else "")),
                       Path("x.yaml"), "").hash for v in ("", "auto", "full", "subsets")}
    assert h[""] == h["auto"] == h["full"] != h["subsets"], h
