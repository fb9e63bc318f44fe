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


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False, holdout: int = 0,
                 train_n: int = 0) -> Dataset:
    """Load a dataset by name: toy2d, digits, cifar10, cifar100, stl10, npz:PATH or folder:PATH.

    cifar10 with `data_dir` an .npz file reads CIFAR-10 from that file (checked to be CIFAR-10) instead of
    torchvision's folder. `holdout` > 0 makes the test split a validation split carved from the training images;
    `train_n` > 0 then keeps only the first train_n training images (a small budget's training set).
    """
    from pagrob.data import split

    data = _load(name, data_dir, download)
    data = split.hold_out(data, holdout) if holdout else data
    return split.first_training_images(data, train_n) if train_n else data


def _load(name: str, data_dir: str | Path, download: bool) -> Dataset:
    from pagrob.data import images, toy2d

    if name == "cifar10" and str(data_dir).endswith(".npz"):
        return images.load_cifar10_npz(Path(data_dir))
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
