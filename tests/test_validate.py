"""`nas validate`'s survey: impossible shapes counted, parameter extremes found."""

from __future__ import annotations

import itertools

from nas.arch import plan
from nas.errors import InvalidArchitecture
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.validate import survey

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
