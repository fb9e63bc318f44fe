"""Sources of "ground-truth" perceptually aligned gradients g(x, t).

Each source is a `TargetSource`: `source(x, classes, index)` returns (B, k, ...) targets for the k
classes of each image. `build_source` makes one from the `pag` section of a config.
"""

from pagrob.targets.base import TargetSource, build_source, reference_source_name
from pagrob.targets.heuristic import ClassMean, NearestNeighbor, OneImage
from pagrob.targets.exact import ExactToy

__all__ = ["TargetSource", "build_source", "reference_source_name", "OneImage", "ClassMean", "NearestNeighbor",
           "ExactToy"]
