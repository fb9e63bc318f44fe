"""The paper's 2-D toy set: two classes, three Gaussian modes each, all on the line x2 = 2 x1.

Class 0 has modes at x1 in {-50, -10, 30}, class 1 at {-30, 10, 50}. Points spread with standard
deviation 1 along the line, so the data is one-dimensional inside the plane. The noisy class
densities are then Gaussian mixtures known in closed form, which is what `targets.exact` uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pagrob.data.base import Dataset

MODES_X1: tuple[tuple[float, ...], ...] = ((-50.0, -10.0, 30.0), (-30.0, 10.0, 50.0))
DIRECTION = torch.tensor([1.0, 2.0]) / math.sqrt(5.0)  # unit vector along x2 = 2 x1
SPREAD = 1.0  # standard deviation along the line
TRAIN_PER_MODE, TEST_PER_MODE = 1000, 100


def mode_centers() -> Tensor:
    """(classes, modes, 2) centres of the mixture components."""
    x1 = torch.tensor(MODES_X1)
    return torch.stack([x1, 2 * x1], dim=-1)


def _sample(per_mode: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    centers = mode_centers()
    xs, ys = [], []
    for label in range(centers.shape[0]):
        for center in centers[label]:
            along = torch.randn(per_mode, 1, generator=generator) * SPREAD
            xs.append(center + along * DIRECTION)
            ys.append(torch.full((per_mode,), label, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def load(seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = _sample(TRAIN_PER_MODE, generator)
    x_test, y_test = _sample(TEST_PER_MODE, generator)
    return Dataset("toy2d", x_train, y_train, x_test, y_test, num_classes=2, bounds=None)
