"""The `Dataset` value every loader returns (the name -> loader list is `registry.DATASETS`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Dataset:
    """Train and test tensors plus what models and attacks need to know about them."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    # Valid input range for attacks and checks: (0, 1) for images, None for unbounded toy points.
    bounds: tuple[float, float] | None = (0.0, 1.0)
    classes: tuple[str, ...] = ()  # class names for pictures and reports; empty: shown by number
    # what x_test/y_test are: "test", or "validation" when held out of the training images (`data.holdout`)
    test_split: str = "test"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.bounds, self.classes, self.test_split)
