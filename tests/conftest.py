import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits, loaded once per test module."""
    from pagrob.data import load_dataset

    return load_dataset("digits")
