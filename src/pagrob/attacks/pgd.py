"""Projected gradient descent (Madry et al., 2018) under L2 or L-infinity, with random start and restarts.

Maximises cross-entropy by default; `targeted=True` instead minimises it toward the given labels
(used for the large-eps pictures that show perceptually aligned gradients).

Each step moves along the cross-entropy's input-gradient divided by 1 - p_y (`log_softmax_cotangents`): the
same step (L2 steps are normalised, L-inf steps are signs), but it does not vanish in float32 where a
confident model's softmax rounds to one-hot, which would stall the attack: gradient masking by rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pagrob.attacks.checks import norms, project
from pagrob.losses import log_softmax_cotangents


class PGD:
    """PGD attack. `step_size` 0 means 2.5 * eps / steps. Keeps, per image, the first restart that fools the model."""

    def __init__(self, model: nn.Module, norm: str = "l2", eps: float = 0.5, steps: int = 20, step_size: float = 0.0,
                 random_start: bool = True, restarts: int = 1, bounds: tuple[float, float] | None = (0.0, 1.0),
                 targeted: bool = False, generator: torch.Generator | None = None):
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be l2 or linf, got '{norm}'")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model, self.norm, self.eps, self.steps = model, norm, eps, steps
        self.step_size = step_size or 2.5 * eps / steps
        self.random_start, self.restarts, self.bounds = random_start, restarts, bounds
        self.targeted, self.generator = targeted, generator

    def _random_start(self, x: Tensor) -> Tensor:
        shape, g = x.shape, self.generator
        if self.norm == "linf":
            noise = (torch.rand(shape, generator=g) * 2 - 1) * self.eps
        else:
            direction = torch.randn(shape, generator=g)
            direction = direction / norms(direction, "l2").view(-1, *([1] * (x.dim() - 1)))
            d = math.prod(shape[1:])
            radius = self.eps * torch.rand(shape[0], generator=g) ** (1.0 / d)
            noise = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        return project(x, x + noise.to(x.device, x.dtype), self.norm, self.eps, self.bounds)

    def _step(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return grad.sign()
        size = norms(grad, "l2").view(-1, *([1] * (grad.dim() - 1)))
        return grad / torch.where(size > 0, size, torch.ones_like(size))

    def _run(self, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self._random_start(x) if self.random_start and self.eps > 0 else x.clone()
        sign = 1.0 if self.targeted else -1.0  # along grad log p(y | x) toward a target, against it otherwise
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            logits = self.model(x_adv)
            (grad,) = torch.autograd.grad(logits, x_adv, log_softmax_cotangents(logits, y[:, None])[0])
            x_adv = project(x, x_adv.detach() + sign * self.step_size * self._step(grad), self.norm, self.eps,
                            self.bounds)
        return x_adv.detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        best = self._run(x, y)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                done = (self.model(best).argmax(1) == y) if self.targeted else (self.model(best).argmax(1) != y)
            if done.all():
                break
            candidate = self._run(x, y)
            best = torch.where(done.view(-1, *([1] * (x.dim() - 1))), best, candidate)
        return best
