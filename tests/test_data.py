import numpy as np
import pytest
import torch

from pagrob.data import DatasetError, load_dataset
from pagrob.data.augment import augment, resolve_mode
from pagrob.data.images import to_unit_nchw


def test_toy2d_has_the_papers_modes_on_the_line():
    d = load_dataset("toy2d")
    assert d.x_train.shape == (6000, 2) and d.x_test.shape == (600, 2)
    assert torch.allclose(d.x_train[:, 1], 2 * d.x_train[:, 0], atol=1e-4)
    for label, modes in ((0, (-50, -10, 30)), (1, (-30, 10, 50))):
        x1 = d.x_train[d.y_train == label, 0]
        nearest = torch.tensor(modes, dtype=torch.float32)[(x1[:, None] - torch.tensor(modes)).abs().argmin(1)]
        spread_along_line = (x1 - nearest) * 5 ** 0.5
        assert spread_along_line.std().item() == pytest.approx(1.0, abs=0.05)
        assert torch.bincount((x1[:, None] - torch.tensor(modes)).abs().argmin(1)).tolist() == [1000] * 3
    assert d.bounds is None
    assert torch.equal(load_dataset("toy2d").x_train, d.x_train)  # seeded


def test_digits_are_unit_range_images_with_a_stratified_seeded_split():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1
    train_share = torch.bincount(d.y_train, minlength=10) / len(d.y_train)
    test_share = torch.bincount(d.y_test, minlength=10) / len(d.y_test)
    assert (train_share - test_share).abs().max() < 0.01
    assert torch.equal(load_dataset("digits").y_test, d.y_test)


def test_missing_cifar_offline_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "cifar-10-batches-py" in message and "data.download=true" in message


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "gray"])
def test_npz_user_data_in_any_layout_becomes_nchw_unit_floats(tmp_path, layout):
    rng = np.random.default_rng(0)
    shape = {"nhwc": (10, 6, 6, 3), "nchw": (10, 3, 6, 6), "gray": (10, 6, 6)}[layout]
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(10) % 3, x_test=x[:4], y_test=np.arange(4) % 3)
    d = load_dataset(f"npz:{path}")
    channels = 1 if layout == "gray" else 3
    assert d.x_train.shape == (10, channels, 6, 6) and d.num_classes == 3
    assert d.x_train.max() <= 1 and d.x_train.dtype == torch.float32


def test_npz_rejects_out_of_range_floats_and_missing_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.full((4, 3, 4, 4), 2.0), y_train=np.zeros(4, int), x_test=np.zeros((2, 3, 4, 4)),
             y_test=np.zeros(2, int))
    with pytest.raises(DatasetError, match=r"must lie in \[0, 1\]"):
        load_dataset(f"npz:{path}")
    np.savez(path, x_train=np.zeros((4, 3, 4, 4)))
    with pytest.raises(DatasetError, match="missing arrays"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DatasetError, match="1 \\(grayscale\\) or 3 \\(RGB\\) channels"):
        to_unit_nchw(np.zeros((2, 5, 4, 4), np.uint8), "x")


def test_folder_dataset(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}")
    assert d.x_train.shape == (4, 3, 5, 5) and d.num_classes == 2


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match="toy2d, digits, cifar10"):
        load_dataset("mnist")


def test_augmentation_moves_targets_exactly_like_their_images():
    x = torch.rand(6, 3, 8, 8)
    targets = torch.stack([x, 2 * x], 1)  # targets that are functions of the image pixels
    x_aug, t_aug = augment(x, "crop_flip", torch.Generator().manual_seed(3), targets)
    assert torch.equal(t_aug[:, 0], x_aug) and torch.equal(t_aug[:, 1], 2 * x_aug)
    assert not torch.equal(x_aug, x)
    assert resolve_mode("auto", "digits", True) == "crop" and resolve_mode("auto", "toy2d", False) == "none"
