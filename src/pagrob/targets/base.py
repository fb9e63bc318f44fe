"""The `TargetSource` interface every source implements (the name -> source list is `registry.SOURCES`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

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
