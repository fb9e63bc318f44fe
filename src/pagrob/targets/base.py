"""The `TargetSource` interface and the config -> source dispatch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from pagrob.config import PagConfig
    from pagrob.data import Dataset


class TargetSource(ABC):
    """Gives g(x, t), the direction in which x should move to look more like class t."""

    name: str = "source"

    @abstractmethod
    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        """(B, k, *x.shape[1:]) targets for x (B, ...) and classes (B, k).

        `index` holds the training-set positions of x, for sources that precompute per image (a store)
        or must not return the image itself (nearest neighbour).
        """

    def to(self, device) -> "TargetSource":
        return self


def reference_source_name(dataset_name: str) -> str:
    """The source used to score alignment when a run trained with none: exact on toy2d, class mean elsewhere."""
    return "exact" if dataset_name == "toy2d" else "cm"


def build_source(source: str, cfg: "PagConfig", dataset: "Dataset") -> TargetSource:
    """Make the named source (`oi`, `cm`, `nn`, `exact`, `sbg`, `smooth`) from the dataset's training split."""
    from pagrob.targets.exact import ExactToy
    from pagrob.targets.heuristic import ClassMean, NearestNeighbor, OneImage

    if source == "oi":
        return OneImage(dataset.x_train, dataset.y_train, dataset.num_classes, cfg.seed)
    if source == "cm":
        return ClassMean(dataset.x_train, dataset.y_train, dataset.num_classes)
    if source == "nn":
        return NearestNeighbor(dataset.x_train, dataset.y_train, dataset.num_classes, cfg.nn_sample, cfg.seed)
    if source == "exact":
        if dataset.name != "toy2d":
            raise ValueError(f"the exact source is known in closed form only for toy2d, not {dataset.name}")
        return ExactToy(cfg.sigma)
    if source == "sbg":
        from pagrob.targets.score_based import open_score_source

        return open_score_source(cfg, dataset)
    if source == "smooth":
        from pagrob.targets.smoothed import SmoothedTrainingSet

        return SmoothedTrainingSet(dataset.x_train, dataset.y_train, dataset.num_classes, cfg.sigma)
    raise ValueError(f"unknown target source '{source}': use oi, cm, nn, exact, sbg or smooth")
