"""The one list of datasets. Config validation, the CLI's help and `load_dataset` all read it: adding a
dataset is one entry in `DATASETS` (a name) or in `ROUTES` (a `prefix:PATH` form that reads the user's files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pagrob.data import images, split, toy2d
from pagrob.data.base import Dataset
from pagrob.errors import DatasetError


@dataclass(frozen=True)
class DatasetEntry:
    summary: str  # one line for the CLI's help
    load: Callable[[Path, bool], Dataset]  # (data_dir, download) for a name; (PATH, False) for a route


DATASETS: dict[str, DatasetEntry] = {
    "toy2d": DatasetEntry("two classes of points on a line in the plane (built in)", lambda d, dl: toy2d.load()),
    "digits": DatasetEntry("scikit-learn's 8x8 digits (shipped with scikit-learn)", lambda d, dl: images.load_digits()),
    **{name: DatasetEntry(f"torchvision {spec[0]} under data.data_dir",
                          lambda d, dl, name=name: images.load_torchvision(name, d, dl))
       for name, spec in images.TORCHVISION.items()},
    "cifar10": DatasetEntry("torchvision CIFAR-10 under data.data_dir, or data.data_dir=FILE.npz of CIFAR-10 itself",
                            lambda d, dl: images.load_cifar10_npz(d) if d.suffix == ".npz" or d.is_file()
                            else images.load_torchvision("cifar10", d, dl)),
}

ROUTES: dict[str, DatasetEntry] = {
    "npz": DatasetEntry("npz:PATH, arrays x_train, y_train, x_test, y_test", lambda p, dl: images.load_npz(p)),
    "folder": DatasetEntry("folder:PATH, PATH/train/CLASS/*.png and PATH/test/CLASS/*.png",
                           lambda p, dl: images.load_folder(p)),
}


def dataset_choices() -> list[str]:
    """Every name and route form: ['toy2d', ..., 'npz:PATH', 'folder:PATH']."""
    return list(DATASETS) + [f"{r}:PATH" for r in ROUTES]


def dataset_names() -> str:
    """'toy2d, digits, ..., npz:PATH or folder:PATH', for messages."""
    names = dataset_choices()
    return f"{', '.join(names[:-1])} or {names[-1]}"


def known_dataset(name: str) -> bool:
    """A registered name, or a registered `prefix:PATH` route with a path."""
    prefix, _, path = name.partition(":")
    return name in DATASETS or (prefix in ROUTES and bool(path))


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False, holdout: int = 0,
                 train_n: int = 0) -> Dataset:
    """Load a dataset by name (see `DATASETS`) or route (`npz:PATH`, `folder:PATH`; see `ROUTES`).

    `holdout` > 0 makes the test split a validation split carved from the training images; `train_n` > 0 then
    keeps only the first train_n training images (a small budget's training set).
    """
    data = _load(name, Path(data_dir), download)
    data = split.hold_out(data, holdout) if holdout else data
    return split.first_training_images(data, train_n) if train_n else data


def _load(name: str, data_dir: Path, download: bool) -> Dataset:
    if name in DATASETS:
        return DATASETS[name].load(data_dir, download)
    prefix, _, path = name.partition(":")
    if prefix in ROUTES and path:
        return ROUTES[prefix].load(Path(path), download)
    raise DatasetError(f"unknown dataset '{name}': use {dataset_names()}")
