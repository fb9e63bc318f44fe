"""The `Dataset` value and the name -> loader dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class DatasetError(ValueError):
    """A dataset that cannot be loaded as asked; the message says how to fix it."""


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.bounds)


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False) -> Dataset:
    """Load a dataset by name: toy2d, digits, cifar10, cifar100, stl10, npz:PATH or folder:PATH."""
    from pagrob.data import images, toy2d

    if name == "toy2d":
        return toy2d.load()
    if name == "digits":
        return images.load_digits()
    if name in images.TORCHVISION:
        return images.load_torchvision(name, Path(data_dir), download)
    if name.startswith("npz:"):
        return images.load_npz(Path(name[4:]))
    if name.startswith("folder:"):
        return images.load_folder(Path(name[7:]))
    raise DatasetError(
        f"unknown dataset '{name}': use toy2d, digits, cifar10, cifar100, stl10, npz:PATH or folder:PATH")
