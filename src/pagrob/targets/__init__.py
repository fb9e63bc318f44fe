"""Sources of "ground-truth" perceptually aligned gradients g(x, t).

Each source is a `TargetSource`: `source(x, classes, index)` returns (B, k, ...) targets for the k
classes of each image. `SOURCES` (registry.py) is the one list of names; `make_source` makes what a config's
pag.source names.
"""

from pagrob.targets.base import TargetSource
from pagrob.targets.exact import ExactToy
from pagrob.targets.heuristic import ClassMean, NearestNeighbor, OneImage
from pagrob.targets.registry import (SOURCES, STORE_PREFIX, SourceEntry, build_source, make_source,
                                     reference_source_name, source_names, source_spec)

__all__ = ["TargetSource", "SOURCES", "STORE_PREFIX", "SourceEntry", "build_source", "make_source", "source_names",
           "source_spec", "reference_source_name", "OneImage", "ClassMean", "NearestNeighbor", "ExactToy"]
