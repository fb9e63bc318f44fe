"""Datasets as tensors in memory: images are float NCHW in [0, 1], toy2d points are raw coordinates.

`load_dataset(name, data_dir)` is the one entry point; it returns a `Dataset`. `DATASETS` and `ROUTES`
(registry.py) are the one list of names.
"""

from pagrob.data.base import Dataset
from pagrob.data.registry import (DATASETS, ROUTES, DatasetEntry, dataset_choices, dataset_names, known_dataset,
                                  load_dataset)
from pagrob.errors import DatasetError

__all__ = ["Dataset", "DatasetError", "DATASETS", "ROUTES", "DatasetEntry", "dataset_choices", "dataset_names", "known_dataset",
           "load_dataset"]
