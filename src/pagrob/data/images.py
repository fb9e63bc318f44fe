"""Image datasets: scikit-learn's digits, torchvision's CIFAR/STL, and a user's own npz or folder.

All are returned as float NCHW tensors in [0, 1] with int64 labels.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pagrob.data.base import Dataset
from pagrob.errors import DatasetError

TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", 100),
    "stl10": ("STL10", "stl10_binary", 10),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SPLITS = {"x_train", "y_train", "x_test", "y_test"}


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (shipped with the package), stratified seeded split."""
    # heavy optional libraries are imported by the loader that needs them, so other datasets do not pay for them
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=test_fraction, random_state=seed,
                                              stratify=bunch.target)
    return Dataset("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
                   torch.from_numpy(x_te), torch.from_numpy(y_te).long(), num_classes=10)


def uint8_nhwc_to_unit(images: np.ndarray) -> Tensor:
    """uint8 0-255 NHWC -> float32 NCHW in [0, 1]: the one conversion for CIFAR, from torchvision or from an npz."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))).float().div_(255)


def _torchvision_split(name: str, root: Path, train: bool, download: bool
                       ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    import torchvision.datasets as tvd

    cls_name, folder, _ = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    kwargs = {"split": "train" if train else "test"} if name == "stl10" else {"train": train}
    try:
        ds = cls(str(root), download=download, **kwargs)
    except (RuntimeError, OSError) as err:
        how = ("rerun with --set data.download=true on a machine with internet access, or copy the "
               f"official archive's extracted folder '{folder}' into {root}/")
        raise DatasetError(f"{name} not found in {root}/{folder} ({str(err).splitlines()[0]}): {how}") from None
    labels = torch.as_tensor(np.asarray(ds.labels if name == "stl10" else ds.targets)).long()
    images = (torch.from_numpy(np.ascontiguousarray(ds.data)).float().div_(255) if name == "stl10"
              else uint8_nhwc_to_unit(ds.data))
    return images, labels, tuple(ds.classes)


def load_torchvision(name: str, root: Path, download: bool = False) -> Dataset:
    x_tr, y_tr, classes = _torchvision_split(name, root, True, download)
    x_te, y_te, _ = _torchvision_split(name, root, False, download)
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes=TORCHVISION[name][2], classes=classes)


def _cifar10_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why these arrays are not CIFAR-10 (one clause), or None when they are."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            return f"x_{split} is {x.dtype} {x.shape}, not uint8 (N, 32, 32, 3) images"
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            return f"y_{split} is {y.dtype} {y.shape}, not {len(x)} integer labels"
        if len(y) and (y.min() < 0 or y.max() > 9):
            return f"y_{split} holds labels {y.min()}..{y.max()}, outside CIFAR-10's 0..9"
    present = len(np.unique(arrays["y_train"]))
    if present != len(CIFAR10_CLASSES):
        return f"y_train holds {present} classes, not CIFAR-10's 10"
    names = arrays.get("classes")
    if names is not None and tuple(str(c) for c in names) != CIFAR10_CLASSES:
        return f"its class names {tuple(str(c) for c in names)} are not CIFAR-10's {CIFAR10_CLASSES}"
    return None


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """An npz archive opened without unpickling; a file that is not one is refused in one sentence."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        found = "cannot be read" if isinstance(err, OSError) else "is not a numpy .npz archive"
        raise DatasetError(f"{path} {found}: write one with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., "
                           "y_test=...)") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path} holds a single numpy array, not an .npz archive of x_train, y_train, x_test, "
                           "y_test (write one with numpy.savez)")
    return z


def load_cifar10_npz(path: Path) -> Dataset:
    """CIFAR-10 from an npz of uint8 NHWC arrays (x_train, y_train, x_test, y_test, optional classes), refused
    unless it is shaped and labelled like CIFAR-10; the tensors are those torchvision's CIFAR10 gives."""
    if not path.is_file():
        raise DatasetError(f"CIFAR-10 file not found: {path} (give data.data_dir an existing .npz, or a folder "
                           "for torchvision's copy)")
    with open_npz(path) as z:
        missing = CIFAR10_SPLITS - set(z.files)
        if missing:
            raise DatasetError(f"{path} is not a CIFAR-10 file: it lacks the arrays {sorted(missing)} "
                               "(it needs x_train, y_train, x_test, y_test)")
        arrays = {k: z[k] for k in z.files if k in CIFAR10_SPLITS | {"classes"}}
    problem = _cifar10_problem(arrays)
    if problem:
        raise DatasetError(f"{path} is not CIFAR-10: {problem}")
    return Dataset("cifar10", uint8_nhwc_to_unit(arrays["x_train"]), torch.from_numpy(arrays["y_train"].astype(np.int64)),
                   uint8_nhwc_to_unit(arrays["x_test"]), torch.from_numpy(arrays["y_test"].astype(np.int64)),
                   num_classes=10, classes=CIFAR10_CLASSES)


def to_unit_nchw(images: np.ndarray, what: str) -> Tensor:
    """Convert uint8 0-255 or float 0-1 images, NHWC or NCHW, grayscale or RGB, to float NCHW in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:  # N, H, W grayscale
        a = a[:, None]
    if a.ndim != 4:
        raise DatasetError(f"{what}: expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}")
    if a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = np.transpose(a, (0, 3, 1, 2))
    if a.shape[1] not in (1, 3):
        raise DatasetError(f"{what}: expected 1 (grayscale) or 3 (RGB) channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DatasetError(f"{what}: float images must lie in [0, 1] (found {np.nanmin(a):.3g}..{np.nanmax(a):.3g});"
                               " scale them, or store uint8 0-255")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    raise DatasetError(f"{what}: images must be uint8 (0-255) or float (0-1), got {a.dtype}")


def _labels(y: np.ndarray, n: int, what: str) -> Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DatasetError(f"{what}: labels must be {n} non-negative integers in a 1-D array, got {y.dtype} {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: Path) -> Dataset:
    """A user's arrays: x_train, y_train, x_test, y_test."""
    if not path.is_file():
        raise DatasetError(f"npz file not found: {path}")
    with open_npz(path) as z:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
        if missing:
            raise DatasetError(f"{path}: missing arrays {sorted(missing)}; it needs x_train, y_train, x_test, y_test")
        x_tr, x_te = to_unit_nchw(z["x_train"], f"{path}:x_train"), to_unit_nchw(z["x_test"], f"{path}:x_test")
        y_tr, y_te = _labels(z["y_train"], len(x_tr), f"{path}:y_train"), _labels(z["y_test"], len(x_te), f"{path}:y_test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(f"{path}: train images {tuple(x_tr.shape[1:])} and test images {tuple(x_te.shape[1:])} differ")
    return Dataset(f"npz:{path}", x_tr, y_tr, x_te, y_te, num_classes=int(max(y_tr.max(), y_te.max())) + 1)


def load_folder(path: Path) -> Dataset:
    """torchvision ImageFolder layout: PATH/train/<class>/*.png and PATH/test/<class>/*.png."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DatasetError(f"{path}/{split} not found: folder datasets need train/<class>/ and test/<class>/")
    splits = {s: ImageFolder(str(path / s), loader=lambda p: np.asarray(Image.open(p).convert("RGB"))) for s in ("train", "test")}
    if splits["train"].classes != splits["test"].classes:
        raise DatasetError(f"{path}: train and test have different class folders")
    arrays = {}
    for s, ds in splits.items():
        shapes = {ds[i][0].shape for i in range(len(ds))}
        if len(shapes) != 1:
            raise DatasetError(f"{path}/{s}: images must all have one size, found {sorted(shapes)[:3]}")
        arrays[s] = (np.stack([ds[i][0] for i in range(len(ds))]), np.array(ds.targets))
    x_tr, x_te = to_unit_nchw(arrays["train"][0], f"{path}/train"), to_unit_nchw(arrays["test"][0], f"{path}/test")
    return Dataset(f"folder:{path}", x_tr, torch.from_numpy(arrays["train"][1]).long(), x_te,
                   torch.from_numpy(arrays["test"][1]).long(), num_classes=len(splits["train"].classes))
