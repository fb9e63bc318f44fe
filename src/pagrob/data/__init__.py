"""Datasets as tensors in memory: images are float NCHW in [0, 1], toy2d points are raw coordinates.

`load_dataset(name, data_dir)` is the one entry point; it returns a `Dataset`.
"""

from pagrob.data.base import Dataset, DatasetError, load_dataset

__all__ = ["Dataset", "DatasetError", "load_dataset"]
