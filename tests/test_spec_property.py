"""Property test: whatever the YAML, the loader either returns a Spec or raises SpecError, nothing else.

Three sources of input: arbitrary text, character-level edits of the shipped specs, and structural
mutations of their parsed form (keys dropped, renamed or added, values swapped for any YAML value).
Whatever loads must also be usable: it hashes, and the search space builds and samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.errors import SpecError
from nas.space import DataInfo, SearchSpace
from nas.spec.loader import LoadedSpec, parse_spec

SHIPPED = [p.read_text() for p in sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["relu", "max", "tpe", "1e-3", "30m", "adam", "digits", "low", "high"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["low", "high", "log", "step", "choices",
                                                                     "base", "growth"])), inner, max_size=4),
), max_leaves=10)


def check(text: str) -> None:
    try:
        spec = parse_spec(text, "prop.yaml")
    except SpecError as exc:
        assert str(exc).strip(), "a SpecError must say something"
        return
    assert len(LoadedSpec(spec, Path("prop.yaml"), text).hash) == 16
    space = SearchSpace(spec)
    space.size()
    import random

    params = space.sample(random.Random(0))
    assert space.contains(params)
    space.decode(params, DataInfo((8, 8, 1), 10, 16.0))


@SETTINGS
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@SETTINGS
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 8),
                                                     st.sampled_from([":", " ", "\n", "-", "[", "]", "{", "}", "'",
                                                                      "\t", "0", "#", "&", "*", "!", "e", ","])),
                                           min_size=1, max_size=5))
def test_edited_shipped_specs(text: str, edits: list[tuple[int, int, str]]) -> None:
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut:]
    check(text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@SETTINGS
@given(st.sampled_from(SHIPPED), st.data())
def test_mutated_shipped_specs(text: str, data: st.DataObject) -> None:
    doc = yaml.safe_load(text)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "rename", "add"]))
        if action == "replace":
            parent[key] = data.draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(key, str):
            parent[data.draw(st.text(min_size=1, max_size=10)) + key[1:]] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=10))] = data.draw(values)
    try:
        dumped = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    check(dumped)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "{low: .nan, high: 0.1}", "{low: 1e-4, high: .inf, log: true}"])
@pytest.mark.parametrize("key", ["train.learning_rate", "space.filters.growth", "data.pixel_max", "search.timeout"])
def test_non_finite_numbers_are_refused(key: str, value: str) -> None:
    """Keys without an upper bound would otherwise let .inf through into round(base * growth ** i)."""
    section, name = key.rsplit(".", 1)
    text = "name: t\ndata: {source: digits}\nspace: {depth: 2}\n"
    if section == "space.filters":
        text = f"name: t\ndata: {{source: digits}}\nspace:\n  depth: 2\n  filters: {{base: 8, growth: {value}}}\n"
    elif section == "data":
        text = f"name: t\ndata: {{source: digits, pixel_max: {value}}}\nspace: {{depth: 2}}\n"
    else:
        text += f"{section}:\n  {name}: {value}\n"
    with pytest.raises(SpecError, match=rf"{key}"):
        parse_spec(text, "t.yaml")
