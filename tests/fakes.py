"""Stand-ins the tests share: a CIFAR-10-shaped file and a kill in the middle of long work."""

from pathlib import Path

import numpy as np
import pytest

from pagrob.data.images import CIFAR10_CLASSES


def write_cifar_like(path: Path, n_train: int, n_test: int) -> Path:
    """A CIFAR-10 npz of smooth random images (8x8 blocks blown up to 32x32), every class present in order."""
    rng = np.random.default_rng(0)

    def images(n):
        return (rng.random((n, 8, 8, 3)).repeat(4, 1).repeat(4, 2) * 255).astype(np.uint8)

    np.savez(path, x_train=images(n_train), y_train=np.arange(n_train) % 10, x_test=images(n_test),
             y_test=np.arange(n_test) % 10, classes=np.array(CIFAR10_CLASSES))
    return path


def interrupt_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, calls: int) -> list:
    """Make `owner.name` raise KeyboardInterrupt on its call number `calls + 1`, as a kill would; the list returned
    grows by one item a call."""
    real, made = getattr(owner, name), []

    def killed(*args, **kwargs):
        made.append(1)
        if len(made) > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, killed)
    return made
