"""Datasets: load a source into numpy (`sources`), split it (`splits`), feed it to Keras (`pipeline`).

`pipeline` imports Keras (and so a framework), so it is not re-exported here: importing `nas.data` stays fast.
"""

from nas.data.sources import RawData, load_source
from nas.data.splits import Split, Splits, make_splits

__all__ = ["RawData", "Split", "Splits", "load_source", "make_splits"]
