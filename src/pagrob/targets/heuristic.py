"""Heuristic targets from training images: g(x, t) = r_t - x for a reference image r_t of class t.

OI: one fixed image per class. CM: the class mean, rescaled to the mean image norm (a raw mean is a
blur with a smaller norm than any image). NN: the nearest image of class t among a fixed sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pagrob.targets.base import TargetSource


def _check_classes(y: Tensor, num_classes: int) -> None:
    missing = sorted(set(range(num_classes)) - set(y.unique().tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no training images; targets need at least one per class")


class ReferenceImages(TargetSource):
    """g(x, t) = refs[t] - x."""

    def __init__(self, refs: Tensor):
        self.refs = refs

    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        return self.refs.to(x.device)[classes] - x.unsqueeze(1)

    def to(self, device) -> "ReferenceImages":
        self.refs = self.refs.to(device)
        return self


class OneImage(ReferenceImages):
    name = "oi"

    def __init__(self, x_train: Tensor, y_train: Tensor, num_classes: int, seed: int = 0):
        _check_classes(y_train, num_classes)
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(num_classes):
            members = (y_train == c).nonzero().flatten()
            picks.append(members[torch.randint(len(members), (1,), generator=g)])
        super().__init__(x_train[torch.cat(picks)].clone())


class ClassMean(ReferenceImages):
    name = "cm"

    def __init__(self, x_train: Tensor, y_train: Tensor, num_classes: int):
        _check_classes(y_train, num_classes)
        flat = x_train.flatten(1)
        mean_norm = flat.norm(dim=1).mean()
        means = torch.stack([flat[y_train == c].mean(0) for c in range(num_classes)])
        means = means * (mean_norm / means.norm(dim=1, keepdim=True).clamp_min(1e-12))
        super().__init__(means.view(num_classes, *x_train.shape[1:]))


class NearestNeighbor(TargetSource):
    """r_t(x) = the L2-nearest of `per_class` seeded samples of class t, never x itself."""

    name = "nn"

    def __init__(self, x_train: Tensor, y_train: Tensor, num_classes: int, per_class: int = 200, seed: int = 0):
        _check_classes(y_train, num_classes)
        g = torch.Generator().manual_seed(seed)
        rows = []
        for c in range(num_classes):
            members = (y_train == c).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=g)]
            if len(members) < 2:
                raise ValueError(f"class {c} has {len(members)} training image; nearest-neighbour targets need 2")
            take = members[: min(per_class, len(members))]
            take = torch.cat([take, take[:1].expand(per_class - len(take))])  # pad short classes with a repeat
            rows.append(take)
        self.sample_index = torch.stack(rows)  # (C, n) training positions
        self.sample = x_train[self.sample_index].flatten(2)  # (C, n, D)

    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        sample = self.sample.to(x.device)
        c, n, d = sample.shape
        flat = x.flatten(1)
        dist = torch.cdist(flat.unsqueeze(0), sample.view(1, c * n, d)).squeeze(0).view(len(x), c, n)
        same = dist <= 1e-6 * (1 + flat.norm(dim=1))[:, None, None]  # the image itself, or an exact copy
        if index is not None:
            same |= self.sample_index.to(x.device)[None] == index.to(x.device)[:, None, None]
        dist = dist.masked_fill(same, float("inf"))
        dist = dist.gather(1, classes[:, :, None].expand(-1, -1, n))  # (B, k, n)
        nearest = dist.argmin(dim=2)  # (B, k)
        refs = sample[classes, nearest]  # (B, k, D)
        return (refs - flat.unsqueeze(1)).view(*classes.shape, *x.shape[1:])

    def to(self, device) -> "NearestNeighbor":
        self.sample = self.sample.to(device)
        return self
