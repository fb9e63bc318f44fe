"""Score-based targets of the training set itself, smoothed with Gaussian noise of standard deviation sigma.

With p_sigma(x | t) = mean over class-t training images x_i of N(x; x_i, sigma^2 I), and p_sigma(x) the same over
all of them,

    g(x, t) = grad log p_sigma(x | t) - grad log p_sigma(x) = (m_t(x) - m(x)) / sigma^2,

where m_t(x) is the average of the class-t images weighted by softmax_i(-|x - x_i|^2 / 2 sigma^2) and m(x) the
same over all images. This is exactly what SBG estimates with a score network, for the empirical distribution:
no network to train. As sigma -> 0 it points from x's nearest training image to its nearest class-t image; as
sigma -> infinity from the data mean to the class mean. A training image given with its `index` is left out of
both averages (otherwise it would be its own nearest neighbour and every target would collapse onto it).

Cost: one (queries x training images) distance matrix and one weighted sum, both matrix products, in chunks of
`chunk` queries; numerically stable at any sigma (per-class log-sum-exp).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pagrob.targets.base import TargetSource


class SmoothedTrainingSet(TargetSource):
    """g(x, t) = (m_t(x) - m(x)) / sigma^2 over the training images (`dtype` float64 for exact checks)."""

    name = "smooth"

    def __init__(self, x_train: Tensor, y_train: Tensor, num_classes: int, sigma: float, chunk: int = 256,
                 dtype: torch.dtype = torch.float32):
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        counts = torch.bincount(y_train, minlength=num_classes)
        if len(counts) > num_classes or (counts < 2).any():
            raise ValueError(f"the smoothed-training-set source needs at least 2 training images in each of the "
                             f"{num_classes} classes (a left-out image must leave one), got counts {counts.tolist()}")
        order = torch.argsort(y_train, stable=True)  # images grouped by class: one contiguous slice per class
        flat = x_train.flatten(1).to(dtype)
        self.center = flat.mean(0)  # distances and differences ignore it; centring keeps |x|^2 small in float32
        self.images = (flat[order] - self.center).contiguous()
        self.sq_norms = (self.images ** 2).sum(1)
        self.rank = torch.empty_like(order)
        self.rank[order] = torch.arange(len(order))  # training index -> row of self.images
        self.bounds = [0] + torch.cumsum(counts, 0).tolist()
        self.sigma, self.chunk, self.dtype = sigma, chunk, dtype

    def all_classes(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """(B, C, D) targets of x for every class, flattened; rows with an `index` leave that training image out."""
        return torch.cat([self._chunk(x[i:i + self.chunk], None if index is None else index[i:i + self.chunk])
                          for i in range(0, len(x), self.chunk)])

    def _chunk(self, x: Tensor, index: Tensor | None) -> Tensor:
        q = x.flatten(1).to(self.dtype) - self.center
        sq_dist = ((q ** 2).sum(1, keepdim=True) + self.sq_norms - 2 * q @ self.images.T).clamp_min_(0)
        logits = sq_dist.mul_(-0.5 / self.sigma ** 2)  # (B, N), in place: the largest buffer
        if index is not None:
            logits[torch.arange(len(q), device=q.device), self.rank[index.to(q.device)]] = float("-inf")
        means, log_mass = [], []
        for lo, hi in zip(self.bounds[:-1], self.bounds[1:]):
            part = logits[:, lo:hi]
            top = part.max(1, keepdim=True).values
            weights = (part - top).exp_()
            mass = weights.sum(1, keepdim=True)
            means.append((weights @ self.images[lo:hi]) / mass)  # m_t(x), centred
            log_mass.append(top + mass.log())  # log sum_i exp(logit_i) over class t
        class_means = torch.stack(means, 1)  # (B, C, D)
        share = torch.softmax(torch.cat(log_mass, 1), 1)  # p(c | x): each class's part of the weight
        # m_t - m = sum over c != t of p(c | x) (m_t - m_c): no cancellation where p(t | x) ~ 1, so the tiny
        # target of a confidently classified x still points the right way (m_t - m would be rounding noise).
        diff = torch.zeros_like(class_means)
        for c in range(class_means.shape[1]):
            diff += share[:, c, None, None] * (class_means - class_means[:, c:c + 1])
        return diff / self.sigma ** 2

    @torch.no_grad()
    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        g = self.all_classes(x, index)
        picked = g.gather(1, classes.to(g.device)[..., None].expand(-1, -1, g.shape[2]))
        return picked.view(*classes.shape, *x.shape[1:]).to(x.dtype)

    def to(self, device) -> "SmoothedTrainingSet":
        self.center, self.images = self.center.to(device), self.images.to(device)
        self.sq_norms, self.rank = self.sq_norms.to(device), self.rank.to(device)
        return self
