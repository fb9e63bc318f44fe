"""Closed-form ground truth on toy2d: g(x, t) = grad_x log p_sigma(t | x) for the noisy Gaussian mixture.

Each class density convolved with N(0, sigma^2 I) is a mixture of Gaussians with covariance
s^2 u u^T + sigma^2 I (u the line's direction, s the spread along it), so
grad log p_sigma(t | x) = grad log p_sigma(x | t) - grad log p_sigma(x) is exact. This is also the
quantity score-based targets estimate, so it checks them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pagrob.data import toy2d
from pagrob.targets.base import TargetSource


def class_posterior_gradients(x: Tensor, sigma: float) -> Tensor:
    """(B, C, 2) exact grad_x log p_sigma(t | x) for every class t, computed in float64.

    Written as sum over c != t of p(c | x) (grad log p(x | t) - grad log p(x | c)): no cancellation, so
    where the posterior saturates (p(t | x) ~ 1 - 1e-17 at a mode's centre for sigma = 5) the tiny gradient
    still points the right way. The textbook grad log p(x | t) - grad log p(x) subtracts two nearly equal
    vectors there and returns rounding noise of either sign.
    """
    xd = x.double()
    centers = toy2d.mode_centers().double().to(x.device)  # (C, M, 2)
    u = toy2d.DIRECTION.double().to(x.device)
    s2, v = toy2d.SPREAD ** 2, sigma ** 2
    # Precision of s^2 u u^T + v I: (I - s^2/(s^2 + v) u u^T) / v.
    precision = (torch.eye(2, dtype=torch.float64, device=x.device) - s2 / (s2 + v) * torch.outer(u, u)) / v
    diff = xd[:, None, None, :] - centers[None]  # (B, C, M, 2)
    pulled = -diff @ precision  # grad of each component's log density, (B, C, M, 2)
    log_density = 0.5 * (pulled * diff).sum(-1)  # -1/2 d^T P d, up to a shared constant, (B, C, M)
    within = torch.softmax(log_density, dim=2)  # responsibilities inside each class
    grad_class = (within[..., None] * pulled).sum(2)  # grad log p(x | c), (B, C, 2)
    posterior = torch.softmax(torch.logsumexp(log_density, dim=2), dim=1)  # p(c | x), (B, C)
    apart = grad_class[:, :, None, :] - grad_class[:, None, :, :]  # [b, t, c] = grad log p(x|t) - grad log p(x|c)
    return (posterior[:, None, :, None] * apart).sum(2)  # the c = t term is zero


class ExactToy(TargetSource):
    name = "exact"

    def __init__(self, sigma: float = 5.0):
        self.sigma = sigma

    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        all_classes = class_posterior_gradients(x, self.sigma)
        return all_classes.gather(1, classes[..., None].expand(-1, -1, 2)).to(x.dtype)
