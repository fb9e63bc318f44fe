"""The validation split: training images held out to choose settings on, so that x_test is never used to tune."""

from __future__ import annotations

import torch

from pagrob.data.base import Dataset
from pagrob.errors import DatasetError

HOLDOUT_SEED = 0  # fixed, so every run of a study holds out the same images


def hold_out(data: Dataset, n: int, seed: int = HOLDOUT_SEED) -> Dataset:
    """`data` with n training images (a seeded random choice) moved into the test split, labelled "validation".

    The real test images are dropped from the returned value, so nothing downstream can look at them.
    """
    if not 0 < n < len(data.x_train):
        raise DatasetError(f"data.holdout = {n} must be between 1 and the {len(data.x_train) - 1} training images "
                           f"of {data.name} less one (0 turns the validation split off)")
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    val, keep = order[:n].sort().values, order[n:].sort().values
    return Dataset(data.name, data.x_train[keep], data.y_train[keep], data.x_train[val], data.y_train[val],
                   data.num_classes, data.bounds, data.classes, "validation")


def first_training_images(data: Dataset, n: int) -> Dataset:
    """`data` trained on its first n training images only (CIFAR-10's order is already shuffled across classes)."""
    if not 0 < n <= len(data.x_train):
        raise DatasetError(f"data.train_n = {n} must be between 1 and the {len(data.x_train)} training images of "
                           f"{data.name} (0 keeps them all)")
    missing = sorted(set(range(data.num_classes)) - set(data.y_train[:n].unique().tolist()))
    if missing:
        raise DatasetError(f"data.train_n = {n} leaves classes {missing} without a training image; raise it")
    return Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_test, data.y_test, data.num_classes,
                   data.bounds, data.classes, data.test_split)
